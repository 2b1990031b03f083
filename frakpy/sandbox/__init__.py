"""A pod sandbox: one VM, its network and its shares."""
