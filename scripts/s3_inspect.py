#!/usr/bin/env python3
"""Prints every object of an S3 bucket as one JSON document, for the tests:
key, size, server-side encryption and metadata as the store reports them on
HEAD, and the object's lines (gunzipped NDJSON). Usage:
  s3_inspect.py ENDPOINT BUCKET
  s3_inspect.py ENDPOINT BUCKET copy FROM TO [INSTANCE]
      (without larch's metadata, or with it and larch_instance set to INSTANCE)
  s3_inspect.py ENDPOINT BUCKET delete KEY
  s3_inspect.py ENDPOINT BUCKET lines
      (one line per archived line, streamed: key, _id, _ts, _account and the
      first word of _line, tab-separated; objects that fail to read are
      reported as "BAD<tab>key<tab>why")"""
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
if sys.argv[3:4] == ["lines"]:
    out = sys.stdout
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            key = item["Key"]
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            try:
                text = gzip.decompress(body).decode()
                rows = []
                for l in text.splitlines():
                    line = json.loads(l)
                    first = line["_line"].split(" ", 1)[0]
                    rows.append(f"{key}\t{line['_id']}\t{line['_ts']}\t{line['_account']}\t{first}\n")
            except Exception as e:  # reported, not hidden: the test decides
                out.write(f"BAD\t{key}\t{e}\n")
                continue
            out.writelines(rows)
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
