"""CRI v1 protocol: ``api.proto`` and its generated stubs (``python tools/gen_protos.py``).

Only ``frakpy.cri`` (and the CRI client) import the ``api_pb2`` modules.
"""
