#!/usr/bin/env python3
"""Azurite helper for the tests. Usage:
  azure_inspect.py BLOB_ENDPOINT create CONTAINER
  azure_inspect.py BLOB_ENDPOINT list CONTAINER
  azure_inspect.py BLOB_ENDPOINT copy CONTAINER FROM TO
`list` prints every blob as JSON: key, size, metadata, sha256 and the gunzipped
NDJSON lines. The account is Azurite's well-known development account."""
import gzip
import hashlib
import json
import sys

from azure.storage.blob import BlobServiceClient

ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
endpoint, command, container = sys.argv[1], sys.argv[2], sys.argv[3]
service = BlobServiceClient.from_connection_string(
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    f"AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint}/devstoreaccount1;"
)
if command == "create":
    service.create_container(container)
    sys.exit(0)
client = service.get_container_client(container)
if command == "copy":
    body = client.download_blob(sys.argv[4]).readall()
    client.upload_blob(sys.argv[5], body)
    sys.exit(0)
objects = []
for blob in client.list_blobs(include=["metadata"]):
    body = client.download_blob(blob.name).readall()
    try:
        lines = [json.loads(l) for l in gzip.decompress(body).decode().splitlines()]
    except Exception:  # reported, not hidden: the test decides
        lines = None
    objects.append(
        {
            "key": blob.name,
            "size": blob.size,
            "metadata": blob.metadata or {},
            "sha256": hashlib.sha256(body).hexdigest(),
            "lines": lines,
        }
    )
json.dump(objects, sys.stdout)
