"""Host side of the frakpy guest agent: transport, ttrpc client, typed agent client.

Kept import-free on purpose: this package (with ``protocol/``) is copied into the guest image,
where every import costs boot time.
"""
