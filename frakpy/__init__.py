"""frakpy: a CRI runtime where every pod is a QEMU virtual machine."""

__version__ = "0.1.0"
