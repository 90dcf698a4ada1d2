# http1.py compiled (setup.py): a direction's reading state and the parser as cdef classes, so the
# per-segment paths read their fields without attribute lookups
cdef class _Side:
    cdef public bint is_req, after_data, expect_100
    cdef public int mode
    cdef public long long buf_ts, buf_seq, left, body, captured
    cdef public object buf, msg, next_seq
    cdef public _Side other

cdef class HttpParser:
    cdef public object _cfg, _wanted, _trace, _lines, _targets, _methods, _h2c, next_parser, _gave_up
    cdef public long long _resource_max, _text_max
    cdef public _Side _client, _server
    cdef public bint _oriented, _done
