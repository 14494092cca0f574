"""envtest tier: tests against a real kube-apiserver + etcd (see apiserver.py).

A package, so that tests/conftest.py's probe and this directory's conftest import the one
module `envtest.apiserver` rather than two copies of it.
"""
