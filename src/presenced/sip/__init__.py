"""Sans-I/O SIP message layer: bytes in, typed messages out, and back."""

from presenced.sip.errors import MessageTooLarge, SipError, SipParseError
from presenced.sip.framing import PING, PONG, StreamFramer
from presenced.sip.headers import ContentType, CSeq, Event, SubscriptionState, Via
from presenced.sip.message import Message, Request, Response, build_response, check_request, parse_message
from presenced.sip.uri import NameAddr, SipURI, parse_name_addr, parse_uri

__all__ = [
    "PING", "PONG", "ContentType", "CSeq", "Event", "Message", "MessageTooLarge", "NameAddr",
    "Request", "Response", "SipError", "SipParseError", "SipURI", "StreamFramer", "SubscriptionState",
    "Via", "build_response", "check_request", "parse_message", "parse_name_addr", "parse_uri",
]
