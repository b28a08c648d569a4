"""moto_server whose create-only writes are atomic, as S3's are.

moto checks `If-None-Match: *` and then stores the object, on a threaded server
with nothing held between the two: two writers creating one key at the same
moment can both succeed, which S3 never lets happen. Tests of many writers
racing for one name run moto through this, with object puts and multipart
completions (the two requests that carry the condition) taken one at a time.
Arguments are moto_server's.
"""

import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_one_at_a_time = threading.Lock()


def _atomic(handler):
    def held(*args, **kwargs):
        with _one_at_a_time:
            return handler(*args, **kwargs)

    return held


S3Response.put_object = _atomic(S3Response.put_object)
S3Response._key_response_post = _atomic(S3Response._key_response_post)

if __name__ == "__main__":
    main(sys.argv[1:])
