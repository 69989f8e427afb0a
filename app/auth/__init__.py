"""Message authentication: SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 9989), Authentication-Results."""
