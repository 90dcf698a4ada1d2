# table.py compiled (setup.py): the flow classes' C fields, and FlowTable's own attributes as fields
# of a cdef class (its per-flow methods read them without attribute lookups)
from collector.flow.model cimport Flow, FlowSide
from collector.flow.report cimport RowBuilder
from collector.l7.session cimport Sessions

cdef class L7State:
    cdef public object parser, protocol, wake, flow_part
    cdef public Sessions sessions

cdef class FlowTable:
    cdef public object sink, cfg, decoder, tagger, sec, l7
    cdef public dict flows, stats, l7_stats, _wheel, _services, _timeouts, _tag_cache
    cdef public list nics, _linktypes, _dirty, _heap, _l4_rows, _l7_rows
    cdef public long long nflows, _flow_seq, _worker_bits, _udp_timeout, _other_timeout, _single_timeout
    cdef public RowBuilder rows
