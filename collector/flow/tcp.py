"""TCP connection states, DeepFlow's timeouts and the close_type each final state maps to.

No flow ends on a packet: the state at timeout (or at the end of a capture) gives close_type
(datamodel §4, §5.4). The transitions live in ``on_control``; the per-packet data path
(sequence tracking, latency) stays in the flow table's hot loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowscope.enums import CloseType

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# States. ESTABLISHED is the only one the hot loop handles without calling on_control.
OPENING1 = 1        # client SYN(s), no answer yet
OPENING2 = 2        # server SYN-ACK, no final ACK yet
ESTABLISHED = 3
CLOSING_TX1 = 4     # client sent FIN
CLOSING_RX1 = 5     # server sent FIN
CLOSING_2 = 6       # both sent FIN, last ACK missing
CLOSED = 7          # both FINs acknowledged
RESET = 8           # RST after the handshake
SYN1 = 9            # SYN answered by a bare ACK (the server still holds an old connection)
OPENING_RST = 10    # RST during the handshake
EXCEPTION = 11      # impossible flag combination
NOT_TCP = 12

STATE_NAMES = {OPENING1: "opening1", OPENING2: "opening2", ESTABLISHED: "established",
               CLOSING_TX1: "closing_tx1", CLOSING_RX1: "closing_rx1", CLOSING_2: "closing2",
               CLOSED: "closed", RESET: "reset", SYN1: "syn1", OPENING_RST: "opening_rst",
               EXCEPTION: "exception", NOT_TCP: "not_tcp"}

# A pure SYN in one of these states starts a new connection on the same 5-tuple.
REUSABLE = frozenset({CLOSED, RESET, OPENING_RST, CLOSING_2, CLOSING_TX1, CLOSING_RX1, EXCEPTION})


@dataclass(frozen=True)
class Timeouts:
    """DeepFlow agent defaults (server/agent_config/template.yaml), in seconds."""

    established: float = 300.0
    opening: float = 5.0            # handshake states
    closing: float = 5.0            # FIN states
    exception: float = 5.0
    single_direction: float = 5.0   # only one side has sent packets
    established_rst: float = 35.0   # after an RST in the established phase; other IP protocols
    opening_rst: float = 1.0        # RST during the handshake
    closed_fin: float = 2.0         # after the last ACK
    udp: float = 5.0

    def us_table(self) -> dict[int, int]:
        """State → timeout in µs, the form the flow table reads."""
        s = 1_000_000
        return {OPENING1: int(self.opening * s), OPENING2: int(self.opening * s),
                SYN1: int(self.opening * s), ESTABLISHED: int(self.established * s),
                CLOSING_TX1: int(self.closing * s), CLOSING_RX1: int(self.closing * s),
                CLOSING_2: int(self.closing * s), CLOSED: int(self.closed_fin * s),
                RESET: int(self.established_rst * s), OPENING_RST: int(self.opening_rst * s),
                EXCEPTION: int(self.exception * s)}


def close_type_of(state: int, *, rst_by_client: bool, prev_state: int, synack_count: int,
                  server_data: bool, timed_out: bool) -> int:
    """The close_type a TCP flow ends with in ``state`` (datamodel §4 table).

    ``timed_out`` is False when the capture ends (or the flow is evicted) while the connection
    may still be alive: an established connection then gets ForcedReport rather than Timeout.
    """
    if state == ESTABLISHED:
        return CloseType.TIMEOUT if timed_out else CloseType.FORCED_REPORT
    if state in (CLOSED, CLOSING_2):
        return CloseType.FINISH
    if state == CLOSING_TX1:
        return CloseType.SERVER_HALF_CLOSE
    if state == CLOSING_RX1:
        return CloseType.CLIENT_HALF_CLOSE
    if state == RESET:
        if not rst_by_client:
            return CloseType.TCP_SERVER_RST
        return CloseType.TCP_FIN_CLIENT_RST if server_data else CloseType.TCP_CLIENT_RST
    if state == OPENING1:
        return CloseType.CLIENT_SYN_REPEAT
    if state == OPENING2:
        return CloseType.SERVER_QUEUE_LACK if synack_count > 3 else CloseType.SERVER_SYN_ACK_REPEAT
    if state == SYN1:
        return CloseType.CLIENT_SOURCE_PORT_REUSE
    if state == OPENING_RST:
        if rst_by_client:
            return CloseType.CLIENT_SOURCE_PORT_REUSE if prev_state == SYN1 else CloseType.CLIENT_ESTABLISH_RESET
        return CloseType.SERVER_RESET if prev_state == OPENING1 else CloseType.SERVER_ESTABLISH_RESET
    if state == EXCEPTION:
        return CloseType.UNKNOWN
    return CloseType.FINISH


def initial_state(flags: int) -> int:
    """State of a flow first seen with ``flags`` (mid-stream flows start established)."""
    if flags & SYN and flags & (FIN | RST):
        return EXCEPTION
    if flags & SYN:
        return OPENING2 if flags & ACK else OPENING1
    if flags & RST:
        return RESET
    return ESTABLISHED


def next_state(state: int, flags: int, from_client: bool) -> int:
    """One transition of the connection state machine for a packet with ``flags``."""
    if flags & SYN and flags & (FIN | RST):
        return EXCEPTION
    if flags & RST:
        if state in (OPENING1, OPENING2, SYN1):
            return OPENING_RST
        if state in (OPENING_RST, CLOSED):
            return state
        return RESET
    if state == OPENING1:
        if flags & SYN:
            return OPENING2 if flags & ACK and not from_client else OPENING1
        if not from_client and flags & ACK:
            return SYN1                # a bare ACK to a SYN: the server still has an old connection
        if flags & FIN:
            return CLOSING_TX1 if from_client else CLOSING_RX1
        return ESTABLISHED if flags & ACK else state  # we missed the SYN-ACK
    if state == SYN1:
        if flags & SYN and flags & ACK and not from_client:
            return OPENING2
        return state
    if state == OPENING2:
        if flags & SYN:
            return state
        if flags & FIN:
            return CLOSING_TX1 if from_client else CLOSING_RX1
        if flags & ACK and from_client:
            return ESTABLISHED
        return state
    if flags & SYN:
        return state                   # SYN/SYN-ACK retransmission or port reuse (handled by caller)
    if state == ESTABLISHED:
        if flags & FIN:
            return CLOSING_TX1 if from_client else CLOSING_RX1
        return state
    if state == CLOSING_TX1:
        return CLOSING_2 if flags & FIN and not from_client else state
    if state == CLOSING_RX1:
        return CLOSING_2 if flags & FIN and from_client else state
    if state == CLOSING_2:
        return CLOSED if flags & ACK and not flags & FIN else state
    return state


def _transition_table() -> list[int]:
    """next_state precomputed for every (state, FIN/SYN/RST/ACK bits, from_client): the flow table
    indexes it as ``NEXT[state << 6 | (flags & 0x17) << 1 | from_client]``."""
    table = [0] * ((NOT_TCP + 1) << 6)
    for state in range(NOT_TCP + 1):
        for bits in range(0x18):
            if bits & ~0x17:
                continue
            for from_client in (0, 1):
                table[state << 6 | bits << 1 | from_client] = next_state(state, bits, bool(from_client))
    return table


NEXT = _transition_table()
