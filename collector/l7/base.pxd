# base.py compiled (setup.py): L7Message as a cdef class (every field an object, as in Python), so
# parsers and row building set and read its fields without attribute lookups
cdef class L7Message:
    cdef public object type, ts, tcp_seq, session_id, version, request_type, request_domain, request_resource
    cdef public object endpoint, request_id, response_code, response_status, response_exception
    cdef public object response_result, length, trace_id, span_id, parent_span_id, x_request_id
    cdef public object http_proxy_client, attributes, is_tls, sql_affected_rows, captured, l7_protocol
    cdef public object biz_protocol, ends_flow
