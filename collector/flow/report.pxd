# report.py compiled (setup.py): the flow classes' C fields, and RowBuilder as a cdef class
from collector.flow.model cimport Flow, FlowSide
from collector.l7.base cimport L7Message

cdef class RowBuilder:
    cdef public object agent_id, nics
    cdef public list seconds, app
    cdef public long long _row_seq, _id_mid
