# report.py compiled (setup.py): the flow classes' C fields, and RowBuilder as a cdef class
from collector.flow.model cimport Flow, FlowSide

cdef class RowBuilder:
    cdef public object agent_id, nics
    cdef public list seconds, app
    cdef public long long _row_seq, _id_mid
