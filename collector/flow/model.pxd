# C types of model.py's classes for its compiled form (setup.py): counters, times and flags become C
# fields of cdef classes, which table.py and report.py read without attribute lookups. Every field
# keeps its Python meaning (values that may be None stay objects).
cdef class FlowSide:
    cdef public long long bytes, fin, flags, l3, l4, ooo, packets, retrans, syn, syn_re, zero_win, isn, mac, port, ip4
    cdef public object gaps, ip, ip6, next_seq, sec_snap, tag_id, tun, win_snap
    cdef public Flow flow
    cdef public FlowSide peer
    cdef public bint is_client, near

cdef class Flow:
    cdef public bint art_wait, dirty, done, is_new, is_new_sec, server_data, srt_wait, rst_by_client
    cdef public long long last_ts, req_ts, resp_ts, req_end, start_ts, syn_ts, synack_ts, win_start, report_at
    cdef public int state, prev_state, proto, nic, score, is_v4, eth_type, vlan, l7_protocol, l7_tries, l7_rev
    cdef public object flow_id, l7, l7s, l7w, lat, win_lat, mkey, obs, request_domain, tunnel
    cdef public FlowSide client, server
