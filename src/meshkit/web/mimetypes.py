"""Content types by file extension, from a table of our own.

The host's /etc/mime.types is never read, so a file gets the same Content-Type on every machine.
Text types carry `charset=utf-8`. Files whose extension is unknown are sniffed from their first
bytes (like Go's http.DetectContentType, which Caddy v1 fell back to).
"""

from __future__ import annotations

_UTF8 = "; charset=utf-8"

_TEXT = {
    ".html": "text/html",
    ".htm": "text/html",
    ".shtml": "text/html",
    ".xhtml": "application/xhtml+xml",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".cjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".jsonld": "application/ld+json",
    ".webmanifest": "application/manifest+json",
    ".xml": "text/xml",
    ".xsl": "text/xml",
    ".xslt": "application/xslt+xml",
    ".rss": "application/rss+xml",
    ".atom": "application/atom+xml",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".log": "text/plain",
    ".conf": "text/plain",
    ".ini": "text/plain",
    ".cfg": "text/plain",
    ".md": "text/markdown",
    ".mdown": "text/markdown",
    ".markdown": "text/markdown",
    ".csv": "text/csv",
    ".tsv": "text/tab-separated-values",
    ".ics": "text/calendar",
    ".vcf": "text/vcard",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".toml": "application/toml",
    ".sh": "application/x-sh",
    ".py": "text/x-python",
    ".go": "text/x-go",
    ".c": "text/x-c",
    ".h": "text/x-c",
    ".rs": "text/x-rust",
    ".java": "text/x-java",
    ".pl": "text/x-perl",
    ".rb": "text/x-ruby",
    ".php": "application/x-httpd-php",
    ".m3u": "audio/x-mpegurl",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".vtt": "text/vtt",
    ".srt": "application/x-subrip",
    ".appcache": "text/cache-manifest",
    ".htc": "text/x-component",
}

_BINARY = {
    # images
    ".png": "image/png",
    ".apng": "image/apng",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpe": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".heic": "image/heic",
    ".heif": "image/heif",
    ".jxl": "image/jxl",
    ".bmp": "image/bmp",
    ".ico": "image/x-icon",
    ".cur": "image/x-icon",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".psd": "image/vnd.adobe.photoshop",
    # fonts
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    # audio / video
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".aac": "audio/aac",
    ".m4a": "audio/mp4",
    ".mid": "audio/midi",
    ".midi": "audio/midi",
    ".weba": "audio/webm",
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".webm": "video/webm",
    ".ogv": "video/ogg",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".mkv": "video/x-matroska",
    ".mpeg": "video/mpeg",
    ".mpg": "video/mpeg",
    ".ts": "video/mp2t",
    ".3gp": "video/3gpp",
    ".flv": "video/x-flv",
    # archives and documents
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".tgz": "application/gzip",
    ".br": "application/x-brotli",
    ".zst": "application/zstd",
    ".bz2": "application/x-bzip2",
    ".xz": "application/x-xz",
    ".7z": "application/x-7z-compressed",
    ".rar": "application/vnd.rar",
    ".tar": "application/x-tar",
    ".jar": "application/java-archive",
    ".wasm": "application/wasm",
    ".epub": "application/epub+zip",
    ".rtf": "application/rtf",
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".xls": "application/vnd.ms-excel",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".ppt": "application/vnd.ms-powerpoint",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".deb": "application/vnd.debian.binary-package",
    ".rpm": "application/x-rpm",
    ".iso": "application/x-iso9660-image",
    ".dmg": "application/x-apple-diskimage",
    ".exe": "application/vnd.microsoft.portable-executable",
    ".msi": "application/x-msdownload",
    ".bin": "application/octet-stream",
    ".swf": "application/x-shockwave-flash",
    ".crt": "application/x-x509-ca-cert",
    ".pem": "application/x-pem-file",
    ".der": "application/x-x509-ca-cert",
}

#: The built-in table: lower-case ".ext" -> Content-Type (text types with charset).
TYPES: dict[str, str] = {
    **{ext: t + _UTF8 for ext, t in _TEXT.items()},
    **_BINARY,
}

DEFAULT_TYPE = "application/octet-stream"


def with_charset(content_type: str) -> str:
    """Add `charset=utf-8` to a text type that names no charset (for `mime` directive values)."""
    low = content_type.lower()
    if "charset=" in low:
        return content_type
    base = low.split(";", 1)[0].strip()
    if base.startswith("text/") or base in (
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
    ):
        return content_type + _UTF8
    return content_type


def extension(name: str) -> str:
    """The extension of the last path segment, dot included and lower-cased ('' if none).

    A leading dot alone (".bashrc") is not an extension."""
    slash = name.rfind("/")
    dot = name.rfind(".")
    if dot <= slash + 1:
        return ""
    return name[dot:].lower()


def type_by_extension(name: str, overrides: dict[str, str] | None = None) -> str | None:
    """The Content-Type for a file name, `overrides` (the mime directive) first; None if unknown."""
    ext = extension(name)
    if not ext:
        return None
    if overrides:
        t = overrides.get(ext)
        if t is not None:
            return t
    return TYPES.get(ext)


_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"%PDF-", "application/pdf"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b\x08", "application/gzip"),
    (b"\x00asm", "application/wasm"),
    (b"wOFF", "font/woff"),
    (b"wOF2", "font/woff2"),
    (b"OggS", "application/ogg"),
    (b"ID3", "audio/mpeg"),
    (b"\x1aE\xdf\xa3", "video/webm"),
]

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<title", b"<p")
_TEXT_CONTROL = frozenset(range(0, 32)) - {9, 10, 12, 13, 27}


def sniff(head: bytes) -> str:
    """Guess a Content-Type from a file's first bytes (up to 512 are looked at)."""
    head = head[:512]
    for magic, ctype in _MAGIC:
        if head.startswith(magic):
            return ctype
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    stripped = head.lstrip(b" \t\r\n\x0c").lower()
    if stripped.startswith(b"\xef\xbb\xbf"):
        stripped = stripped[3:]
    for start in _HTML_STARTS:
        if stripped.startswith(start) and stripped[len(start) : len(start) + 1] in (b" ", b">"):
            return "text/html" + _UTF8
    if stripped.startswith(b"<?xml"):
        return "text/xml" + _UTF8
    if any(b in _TEXT_CONTROL for b in head):
        return DEFAULT_TYPE
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the end of the sample is still text
        if exc.start < len(head) - 3:
            return DEFAULT_TYPE
    return "text/plain" + _UTF8
