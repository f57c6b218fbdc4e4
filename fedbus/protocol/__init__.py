"""The fedbus wire protocol: messages, codec and topics. Pure: no I/O."""
