"""frakpy guest agent: PID 1 of every pod VM, serving the agent API over ttrpc.

Import-free on purpose; see ``__main__`` for the start-up sequence.
"""

__version__ = "0.1.0"
