"""Sends log records to larch with the OpenTelemetry Python SDK's OTLP/HTTP
log exporter, unchanged: protobuf (opentelemetry-exporter-otlp-proto-http) or
JSON (opentelemetry-exporter-otlp-json-http), gzipped.

    send.py --endpoint URL --key KEY --encoding protobuf|json --tag T --records N [--timeout S]

Prints one JSON object: the export results and the retries the exporter made.
Exits 0 only if every export succeeded.
"""

import argparse
import json
import logging
import sys

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource


class Retries(logging.Handler):
    """Counts the exporter's warnings that it will try again."""

    def __init__(self):
        super().__init__()
        self.retries = 0
        self.messages = []

    def emit(self, record):
        text = record.getMessage()
        self.messages.append(text)
        if "retry" in text.lower():
            self.retries += 1


def exporter_class(encoding):
    if encoding == "protobuf":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter, Compression.Gzip
    from opentelemetry.exporter.otlp.common.http import Compression
    from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter, Compression.GZIP


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--encoding", choices=["protobuf", "json"], required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--records", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()

    retries = Retries()
    logging.getLogger("opentelemetry").addHandler(retries)
    logging.getLogger("opentelemetry").setLevel(logging.INFO)

    base, compression = exporter_class(args.encoding)
    results = []

    class Recording(base):
        def export(self, batch):
            result = super().export(batch)
            results.append(result)
            return result

    exporter = Recording(
        endpoint=args.endpoint,
        headers={"apikey": args.key},
        compression=compression,
        timeout=args.timeout,
    )
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "checkout", "host.name": "edge-4"}),
        shutdown_on_exit=False,
    )
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("shop.cart", "2.1")
    for i in range(args.records):
        logger.emit(
            body=f"{args.tag} record {i}",
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            attributes={"n": i, "ok": True, "tags": ["a", "b"], "empty": []},
        )
    provider.force_flush()
    provider.shutdown()
    ok = len(results) == args.records and all(
        r == LogRecordExportResult.SUCCESS for r in results
    )
    print(
        json.dumps(
            {
                "ok": ok,
                "exports": len(results),
                "failed": sum(r != LogRecordExportResult.SUCCESS for r in results),
                "retries": retries.retries,
                "messages": retries.messages[-5:],
            }
        )
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
