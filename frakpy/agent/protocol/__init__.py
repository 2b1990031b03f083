"""Wire protocol shared by frakpyd and the in-VM agent: ttrpc framing and the agent API.

Import-free on purpose (the guest imports only the submodules it needs). Everything in this
package may import only the standard library, protobuf and its own generated modules, because
the tree is copied verbatim into the guest image under ``/usr/lib/frakpy/``.
"""
