"""The lease engine: pure storage logic, sanlock 3.8 compatible.

No threads, no Kubernetes, no libvirt: everything else imports the engine; the engine
imports nothing of ours outside this package.

Defined here, because everything of vmlease imports this package first: what every vmlease error
is made of. sanlock's result codes by name (``src/sanlock_rv.h``): the engine raises them, the
agent sends them on its wire, the CLI exits with them and the libvirt hook decides on them, so each
number is written here once (codes that are errnos, ``-EAGAIN``, ``-EEXIST``, come from ``errno``
where used). And :class:`Templated`, the one way a vmlease error is built: a class-level
``template`` formatted with the keyword fields it was raised with, the fields kept (``.fields``,
and as attributes) so callers can report them structurally. The engine's errors
(``errors.LeaseError``), the libvirt hook's, its config's, the domain parser's and the agent
client's all derive from it.

Nothing is imported here: the libvirt hook loads this package on every call (through its config),
where a module of its own (or ``errors``, its catalogue and ``typing``) would cost every domain
start; ``tests/unit/virt/test_libvirt_hook.py`` pins what the hook imports.
"""

TYPE_CHECKING = False  # typing itself is not imported: the hook loads this module on every call
if TYPE_CHECKING:
    from typing import Any, ClassVar

SANLK_ERROR = -201  # "General error": anything without a code of its own
SANLK_AIO_TIMEOUT = -202
SANLK_DBLOCK_LVER = -212  # lost a ballot: a newer lease version
SANLK_DBLOCK_MBAL = -213  # lost a ballot: a higher ballot number
SANLK_DBLOCK_CHECKSUM = -214
SANLK_LEADER_MAGIC = -223  # "Lease does not exist on storage"
SANLK_LEADER_VERSION = -224
SANLK_LEADER_SECTORSIZE = -225
SANLK_LEADER_LOCKSPACE = -226
SANLK_LEADER_RESOURCE = -227
SANLK_LEADER_NUMHOSTS = -228
SANLK_LEADER_CHECKSUM = -229
SANLK_ADDLS_SIZES = -230
SANLK_ADDLS_INVALID_HOSTID = -231
SANLK_ACQUIRE_LVER = -240
SANLK_ACQUIRE_IDLIVE = -243  # "Lease is held by another host"
SANLK_ACQUIRE_OWNED = -244  # acquired by another host in a concurrent ballot
SANLK_ACQUIRE_OTHER = -245  # our ballot committed another host's proposal
SANLK_ACQUIRE_OWNED_RETRY = -247  # owner silent, not yet known dead
SANLK_RELEASE_LVER = -250
SANLK_RELEASE_OWNER = -251
SANLK_RENEW_OWNER = -260
SANLK_RENEW_DIFF = -261
SANLK_HOSTID_BUSY = -262
SANLK_REQUEST_MAGIC = -270
SANLK_REQUEST_OLD = -272
SANLK_REQUEST_LVER = -273
SANLK_RINDEX_MAGIC = -274  # no resource index at the given place
SANLK_RINDEX_VERSION = -275
SANLK_RINDEX_LOCKSPACE = -276
SANLK_RINDEX_OFFSET = -277
SANLK_RINDEX_DIFF = -278


class Templated(Exception):
    """An error whose message is ``template.format(**fields)``; subclasses set ``template``.

    ``one_line`` collapses whitespace runs (newlines from a quoted OS error included) to one
    space, for messages that must stay on one line (libvirt quotes the hook's stderr line).
    """

    template: "ClassVar[str]" = "{detail}"
    one_line: "ClassVar[bool]" = False

    def __init__(self, **fields: "Any") -> None:
        self.fields = fields
        message = self.template.format(**fields)
        super().__init__(" ".join(message.split()) if self.one_line else message)

    def __getattr__(self, name: str) -> "Any":
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None
