"""Everything QEMU, nothing about pods: argv rendering, process lifecycle, QMP, hotplug."""
