"""Shared fixtures. Peer fixtures live in ``tests/peers/`` and are registered here."""

pytest_plugins = [
    "tests.peers.postgres",
    "tests.peers.orthanc",
    "tests.peers.ftps",
    "tests.peers.sftp",
    "tests.peers.azurite",
    "tests.peers.rabbitmq",
]
