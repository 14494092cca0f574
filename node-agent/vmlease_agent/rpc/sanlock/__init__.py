"""sanlock 3.8's client API, served by the agent (``vmlease-agent --sanlock-api``): unchanged
sanlock clients talk to ``sanlock.sock`` as to the sanlock daemon, over the agent's one lease
engine. How connections work is told in ``server``. One module per concern, as sanlock's
own ``src/``, from the bottom up:

``wire``: the protocol's structs, commands and flags, packed and unpacked as sanlock's.
``errors``: what the API refuses by itself, with sanlock's codes; ``Disconnected``.
``connection``: one client: the process it registered (``Registration``), its socket.
``base``: ``ApiBase``, the state and helpers every command group shares; dispatch, replies.

The command groups, each a mixin over ``ApiBase``:

``lockspaces``: add, inquire, remove and list lockspaces, get_hosts.
``leases``: acquire, release, inquire, read_resource(_owners), request; killpath, restrict.
``convert``: convert a held lease; set_lvb, get_lvb.
``formatting``: align, write_lockspace, write_resource.
``rindex``: the resource index commands.
``daemon``: version, shutdown(_wait), status and its ``-D`` text, host_status.
``inspection``: read_lockspace, examine, set_config, log_dump (``LogRing``), renewal.
``events``: reg_event, end_event, set_event, and the events delivered to listeners.

``api``: ``SanlockApi``, the groups composed over ``ApiBase``.
``server``: ``SanlockApiServer``, the socket and its connections; ``default_run_dir``.
"""
