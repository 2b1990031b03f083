"""Container specs: turn a CRI ContainerConfig into the OCI runtime spec crun runs in the guest."""
