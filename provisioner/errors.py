"""The exception tree of provisioner, in one place.

::

    ProvisionerError                 base of everything we raise on purpose
    ├── NotFound (marker)            what was named does not exist (the CLI exits 3)
    ├── Refused (marker)             refused as things stand: it clashes with what exists
    │                                or the state table forbids it (the CLI exits 4)
    ├── UsageError                   a command line a command cannot act on (exits 2)
    ├── ConfigError                  a bad provisioner.toml: key, value and why
    │   └── ConfigNotFound (+NotFound)   no configuration file where it was looked for
    ├── RegistryError                the registry refused an operation
    │   ├── NodeNotFound (+NotFound) no node of that MAC or hostname
    │   ├── NameTaken (+Refused)     a hostname another node has, or a node a cluster
    │   │                            names (enroll/lifecycle.py refuses to rename it)
    │   ├── IllegalTransition (+Refused)  a node state change the state table forbids
    │   ├── RegistryConflict (+Refused)   a row whose unique key another row has
    │   │   └── KeyExists (gateway/source.py)  a gateway API key of that name exists
    │   └── SchemaVersionError       a registry file from a newer provisioner, or one that
    │                                needs upgrading and was opened read-only
    ├── BackupError (backup.py)      a backup not written, or one refused at restore
    ├── ProtocolError                bytes from the wire that break a protocol's rules
    │   ├── DhcpDecodeError          a datagram that is not a well-formed BOOTP/DHCP packet
    │   ├── DhcpReplyTooLarge        a reply the request's maximum message size cannot hold
    │   └── TftpPathError            a TFTP file name outside the served root
    ├── BootServiceError             a boot service failed to start (a bind, a missing file)
    │   └── InstanceConflict (instance.py)  another serve holds the state folder or DHCP port
    ├── ServiceError (service.py)    the systemd unit not installed (write or reload failed)
    ├── ImageError (image/__init__.py)   an image could not be built
    │   ├── RecipeError              a bad image recipe: file, key and why
    │   ├── ImageNotFound (image/store.py)   no such image or version in the store
    │   └── ImageInUse (image/store.py)      a version nodes boot cannot be removed
    ├── AcceleratorTableError (discovery/accelerators.py)  a bad hwprofiles/accelerators.yaml
    ├── ArtifactError (artifacts/__init__.py)  a runtime or wheelhouse not built or stored
    │   └── ArtifactNotFound         no artifact of that name in the store
    ├── ModelError                   a model not added, found or removed (models/store.py,
    │   │                            models/hf.py: a Hugging Face folder refused)
    │   └── ModelNotFound (models/store.py)  no model of that name in the store
    ├── ClusterError (clusters/spec.py)  a cluster refused (the member or rule at fault)
    │   └── RollRefused (+Refused, clusters/roll.py)  a rolling upgrade that cannot start
    ├── DiskRefused (+Refused, clusters/cache_disk.py)  a disk not made a node's cache
    ├── UnsafeValue (names.py)       a name or value that may not reach a unit, a shell
    │                                line, a firewall rule or a boot script
    ├── RayOutputError (smoke/ray.py)  Ray gave no node list
    └── LabError (lab/netns.py)      the virtual lab could not be built or driven
        ├── CommandError             a command (ip, dnsmasq, ...) failed: argv, status, stderr
        └── PxeClientError (lab/pxepacket.py)  the scripted PXE client got no answer

Third-party exceptions (tftpy, uvicorn, subprocess, OSError) are translated at the
adapter edge with ``raise OurError(...) from exc``.

``NotFound`` and ``Refused`` are markers: a class says what kind of failure it is by
deriving from one of them as well as from its own family (``NodeNotFound(RegistryError,
NotFound)``), and the command line turns the kind into its exit status
(:mod:`provisioner.cli.common`, ``docs/cli.md``); they are the REST API's 404 and 409.
Of the classes in other modules, ImageNotFound, ModelNotFound and ArtifactNotFound are
not-found errors and ImageInUse a refusal, but do not derive from the markers yet: the
command line's table names them until they do.
"""

from __future__ import annotations


class ProvisionerError(Exception):
    """Base of every error provisioner raises on purpose."""


class NotFound(ProvisionerError):
    """Marker: the node, cluster, image, model, profile or file named does not exist."""


class Refused(ProvisionerError):
    """Marker: refused as things stand: it would overwrite or clash with what exists (a
    name taken, a MAC known under another name, a file there), or the state table forbids
    it. Nothing was changed."""


class UsageError(ProvisionerError):
    """A command line that a command cannot act on (an argument missing or malformed,
    found by the command rather than by argparse); the command line exits 2 for it."""


class ConfigError(ProvisionerError):
    """A configuration value is invalid; names the key, the value and the reason."""

    def __init__(self, key: str, value: object, reason: str, *, source: str | None = None):
        self.key = key
        self.value = value
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key} = {value!r}: {reason}")


class ConfigNotFound(ConfigError, NotFound):
    """No configuration file at ``path``; ``hint`` says how to write one."""

    def __init__(self, path: object, hint: str):
        self.path = path
        self.key, self.value, self.reason, self.source = "(file)", path, hint, str(path)
        ProvisionerError.__init__(self, f"no configuration file {path}: {hint}")


class RegistryError(ProvisionerError):
    """The registry could not carry out an operation."""


class RegistryConflict(RegistryError, Refused):
    """A row whose UNIQUE or PRIMARY KEY another row has: nothing was written."""


class NodeNotFound(RegistryError, NotFound):
    """No node with that MAC or hostname in the registry."""


class NameTaken(RegistryError, Refused):
    """A name that may not be given or changed: another node has it, the node's MAC is
    known under another name, or a cluster names the node by it."""


class IllegalTransition(RegistryError, Refused):
    """A node state change that the state table does not allow."""


class SchemaVersionError(RegistryError):
    """The registry file's schema version (``PRAGMA user_version``) is not one this
    provisioner may use as it is: newer than it knows (refused, nothing written), or older
    and opened read-only (only a command that writes upgrades a file)."""

    def __init__(self, path: object, found: int, known: int, message: str):
        self.path = path
        self.found = found
        self.known = known
        super().__init__(message)


class ProtocolError(ProvisionerError):
    """Bytes received from the network that break a protocol's rules (remote's fault)."""


class DhcpDecodeError(ProtocolError):
    """A datagram that is not a well-formed BOOTP/DHCP packet."""


class DhcpReplyTooLarge(ProtocolError):
    """A DHCP reply longer than the request's maximum message size (option 57) allows:
    what makes it long is the request's own option 82, which a reply echoes."""


class TftpPathError(ProtocolError):
    """A TFTP file name that would leave the served root (traversal, NUL, symlink)."""


class BootServiceError(ProvisionerError):
    """A boot service could not start or keep running (bind failure, missing file)."""


class ModelError(ProvisionerError):
    """A model could not be added, found or removed (the model store and its Hugging Face
    folders: :mod:`provisioner.models.store`, :mod:`provisioner.models.hf`)."""
