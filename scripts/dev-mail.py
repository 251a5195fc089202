#!/usr/bin/env python3
"""The development mail sink: a small SMTP server (standard library only) that keeps every email
notifications sends, so a person running the local mesh can read sign-up and password-reset emails.

    python3 scripts/dev-mail.py --port 1025 --dir .dev/mail

Each message is written as <dir>/<n>.eml (the raw message) and <dir>/<n>.txt (To, Subject and the
plain-text part, decoded), and one line per message is appended to <dir>/index:
"<time>  <to>  <subject>  <n>.txt". Local use only: it binds 127.0.0.1 and accepts any sender.
"""

import argparse
import asyncio
import datetime
import email
import email.policy
import pathlib


class Sink:
    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.count = len(list(directory.glob("*.eml")))

    def store(self, recipients, data: bytes):
        self.count += 1
        n = f"{self.count:05d}"
        (self.directory / f"{n}.eml").write_bytes(data)
        message = email.message_from_bytes(data, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        subject = str(message.get("Subject", ""))
        to = ", ".join(recipients)
        (self.directory / f"{n}.txt").write_text(f"To: {to}\nSubject: {subject}\n\n{text}")
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        with (self.directory / "index").open("a") as index:
            index.write(f"{stamp}  {to}  {subject}  {n}.txt\n")

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        def reply(line: str):
            writer.write(line.encode() + b"\r\n")

        reply("220 dev-mail ESMTP")
        recipients = []
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                command = line.decode(errors="replace").strip()
                upper = command.upper()
                if upper.startswith("EHLO"):
                    writer.write(b"250-dev-mail\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                elif upper.startswith("HELO"):
                    reply("250 dev-mail")
                elif upper.startswith("MAIL FROM:"):
                    recipients = []
                    reply("250 OK")
                elif upper.startswith("RCPT TO:"):
                    recipients.append(command[8:].strip().strip("<>"))
                    reply("250 OK")
                elif upper == "DATA":
                    reply("354 end with <CRLF>.<CRLF>")
                    chunks = []
                    while True:
                        data_line = await reader.readline()
                        if not data_line or data_line in (b".\r\n", b".\n"):
                            break
                        if data_line.startswith(b".."):
                            data_line = data_line[1:]
                        chunks.append(data_line)
                    self.store(recipients, b"".join(chunks))
                    reply("250 queued")
                elif upper in ("RSET", "NOOP"):
                    reply("250 OK")
                elif upper == "QUIT":
                    reply("221 bye")
                    return
                else:
                    reply("502 not implemented")
                await writer.drain()
        finally:
            writer.close()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--dir", default=".dev/mail")
    args = parser.parse_args()
    sink = Sink(pathlib.Path(args.dir))
    server = await asyncio.start_server(sink.session, "127.0.0.1", args.port)
    print(f"dev-mail: SMTP on 127.0.0.1:{args.port}, messages in {args.dir}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
