"""provisioner: a bare-metal cluster provisioning appliance."""

__version__ = "0.1.0"
