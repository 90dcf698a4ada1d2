# session.py compiled (setup.py): a flow's pending requests as a cdef class
cdef class Sessions:
    cdef public object fifo
    cdef public dict by_id
    cdef public long long timeout_us
