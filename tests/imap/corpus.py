"""Real-world-shaped MIME messages (CRLF) for the IMAP tests that compare our server with Dovecot:
plain text, multipart/alternative, mixed with attachments, an attached message/rfc822, nesting
three deep, 8-bit bodies, encoded words in headers, boundaries with odd characters, a preamble and
epilogue, folded and repeated header fields, an address group and a message without a body."""

from __future__ import annotations


def crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


PLAIN = crlf(
    """Return-Path: <carol@example.net>
From: Carol Example <carol@example.net>
To: admin@example.org
Subject: Plain text
Date: Tue, 24 Nov 2026 10:00:00 +0000
Message-ID: <plain@example.net>

Hello Admin,

just plain text.
--\x20
Carol
"""
)

ALTERNATIVE = crlf(
    """From: "Shop, Inc." <news@shop.example>
To: Admin <admin@example.org>, bob@example.org
Cc: undisclosed-recipients:;
Subject: =?UTF-8?Q?Sp=C3=A9cial_offer?= for =?ISO-8859-1?B?dm91cw==?=
Date: Wed, 25 Nov 2026 08:30:00 +0100
Message-ID: <alt@shop.example>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="=_alt_42"

This is a multi-part message in MIME format.

--=_alt_42
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Sp=C3=A9cial offer
--=_alt_42
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<p>Sp=C3=A9cial <b>offer</b></p>
--=_alt_42--
epilogue text
"""
)

ATTACHMENTS = crlf(
    """From: dave@example.com
To: admin@example.org
Subject: Report with attachments
Date: Thu, 26 Nov 2026 12:00:00 -0500
Message-ID: <mixed@example.com>
In-Reply-To: <plain@example.net>
MIME-Version: 1.0
Content-Type: multipart/mixed;
 boundary="----=_Part_0_1234.5678"

------=_Part_0_1234.5678
Content-Type: text/plain; charset=us-ascii

See the attached files.

------=_Part_0_1234.5678
Content-Type: application/pdf; name="report.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename="report.pdf"

JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCnBkZgpl
bmRzdHJlYW0KZW5kb2JqCg==
------=_Part_0_1234.5678
Content-Type: image/png; name=dot.png
Content-Transfer-Encoding: base64
Content-ID: <dot@example.com>
Content-Description: a single dot

iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAA
AABJRU5ErkJggg==
------=_Part_0_1234.5678--
"""
)

FORWARDED = crlf(
    """From: eve@example.org
To: admin@example.org
Subject: Fwd: Plain text
Date: Fri, 27 Nov 2026 09:15:00 +0000
Message-ID: <fwd@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=fwd

--fwd
Content-Type: text/plain

Forwarding this.

--fwd
Content-Type: message/rfc822
Content-Description: forwarded message

From: Carol Example <carol@example.net>
To: eve@example.org
Subject: Inner subject
Date: Tue, 24 Nov 2026 10:00:00 +0000
Message-ID: <inner@example.net>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="inner b"

--inner b
Content-Type: text/plain; charset=us-ascii

inner plain
--inner b
Content-Type: text/html; charset=us-ascii

<i>inner html</i>
--inner b--

--fwd--
"""
)

NESTED = crlf(
    """From: frank@example.net
To: admin@example.org
Subject: Nested
Date: Sat, 28 Nov 2026 18:00:00 +0000
Message-ID: <nested@example.net>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

--outer
Content-Type: multipart/related; boundary="related"; type="multipart/alternative"

--related
Content-Type: multipart/alternative; boundary='alt'

--'alt'
Content-Type: text/plain

level three plain
--'alt'
Content-Type: text/html

<img src="cid:logo">
--'alt'--

--related
Content-Type: image/gif
Content-ID: <logo>
Content-Transfer-Encoding: base64

R0lGODlhAQABAAAAACw=
--related--

--outer
Content-Type: text/csv; name="data.csv"
Content-Disposition: attachment

a,b
1,2
--outer--
"""
)

EIGHT_BIT = crlf(
    """From: =?UTF-8?B?SsO8cmdlbiBNw7xsbGVy?= <juergen@example.de>
To: admin@example.org
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=
Date: Sun, 29 Nov 2026 07:00:00 +0100
Message-ID: <8bit@example.de>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße aus Köln \u2013 schöne Tage!
"""
)

ODD = crlf(
    """Received: from a.example by b.example; Mon, 30 Nov 2026 06:00:00 +0000
Received: from c.example by a.example; Mon, 30 Nov 2026 05:59:00 +0000
From: Group Sender <group@example.com>
To: friends: alice@example.com, "Bob B." <bob@example.com>;
Reply-To: replies@example.com
Subject: A long subject that is folded
 over two lines
Date: Mon, 30 Nov 2026 06:00:00 +0000
Message-ID: <odd@example.com>
X-Custom: one
x-custom: two
MIME-Version: 1.0
Content-Type: MULTIPART/Mixed; BOUNDARY="b(1)+_,-./:=?"

preamble
--b(1)+_,-./:=?
Content-Type: text/plain; charset="ISO-8859-1"; format=flowed

first part
--b(1)+_,-./:=?
Content-Type: application/octet-stream

\x01binary-ish
--b(1)+_,-./:=?--
"""
)

HEADER_ONLY = crlf(
    """From: nobody@example.org
To: admin@example.org
Subject: No body
Date: Mon, 30 Nov 2026 07:00:00 +0000
Message-ID: <nobody@example.org>

"""
)

CORPUS: dict[str, bytes] = {
    "plain": PLAIN,
    "alternative": ALTERNATIVE,
    "attachments": ATTACHMENTS,
    "forwarded": FORWARDED,
    "nested": NESTED,
    "eight_bit": EIGHT_BIT,
    "odd": ODD,
    "header_only": HEADER_ONLY,
}
