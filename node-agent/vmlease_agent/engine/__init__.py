"""The lease engine: pure storage logic, sanlock 3.8 compatible.

No threads, no Kubernetes, no libvirt: everything else imports the engine; the engine
imports nothing of ours outside this package.
"""
