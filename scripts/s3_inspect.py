#!/usr/bin/env python3
"""Prints every object of an S3 bucket as one JSON document, for the tests:
key, size, server-side encryption and metadata as the store reports them on
HEAD, and the object's lines (gunzipped NDJSON). Usage:
  s3_inspect.py ENDPOINT BUCKET
  s3_inspect.py ENDPOINT BUCKET copy FROM TO [INSTANCE]
      (without larch's metadata, or with it and larch_instance set to INSTANCE)
  s3_inspect.py ENDPOINT BUCKET delete KEY"""
import gzip
import hashlib
import json
import sys

import boto3

endpoint, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id="test",
    aws_secret_access_key="test",
    region_name="us-east-1",
)
if sys.argv[3:4] == ["copy"]:
    got = s3.get_object(Bucket=bucket, Key=sys.argv[4])
    metadata = {}
    if len(sys.argv) > 6:
        metadata = dict(got.get("Metadata", {}), larch_instance=sys.argv[6])
    s3.put_object(Bucket=bucket, Key=sys.argv[5], Body=got["Body"].read(), Metadata=metadata)
    sys.exit(0)
if sys.argv[3:4] == ["delete"]:
    s3.delete_object(Bucket=bucket, Key=sys.argv[4])
    sys.exit(0)
objects = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for item in page.get("Contents", []):
        key = item["Key"]
        head = s3.head_object(Bucket=bucket, Key=key)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            lines = [json.loads(l) for l in gzip.decompress(body).decode().splitlines()]
        except Exception as e:  # reported, not hidden: the test decides
            lines = None
        objects.append(
            {
                "key": key,
                "size": head["ContentLength"],
                "sse": head.get("ServerSideEncryption"),
                "content_type": head.get("ContentType"),
                "content_encoding": head.get("ContentEncoding"),
                "metadata": head.get("Metadata", {}),
                "sha256": hashlib.sha256(body).hexdigest(),
                "lines": lines,
            }
        )
json.dump(objects, sys.stdout)
