"""What a custom `browse` template runs with: Caddy v1's browse.Listing, under Go's names.

    .Name .Path .CanGoUp .Items .NumDirs .NumFiles .Sort .Order .ItemsLimitedTo .User
    .BreadcrumbMap  .Breadcrumbs (each with .Link and .Text)
    each item: .Name .Size .URL .ModTime .Mode .IsDir .IsSymlink .HumanSize
               .HumanModTime FORMAT
plus every function of the templates context (.Include, .Header, .Now ...).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

from meshkit.web.fileserver import FileServer
from meshkit.web.gotemplate.gotime import GoTime
from meshkit.web.message import Request
from meshkit.web.tmplctx import TemplateContext

if TYPE_CHECKING:
    from meshkit.web.directives.browse import Item

_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27


def ibytes(n: int) -> str:
    """go-humanize's IBytes (what Caddy v1's HumanSize printed): 10 B, 2.0 KiB, 121 KiB."""
    if n < 10:
        return f"{n} B"
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    e = min(math.floor(math.log(n, 1024)), len(units) - 1)
    val = math.floor(n / 1024**e * 10 + 0.5) / 10
    return f"{val:.1f} {units[e]}" if val < 10 else f"{val:.0f} {units[e]}"


class GoFileMode(int):
    """os.FileMode: prints like Go's (`drwxr-xr-x`, `Lrwxrwxrwx`, `-rw-r--r--`)."""

    def String(self) -> str:
        out = ""
        if self & _GO_DIR:
            out += "d"
        if self & _GO_SYMLINK:
            out += "L"
        if not out:
            out = "-"
        rwx = "rwxrwxrwx"
        out += "".join(c if self & (1 << (8 - i)) else "-" for i, c in enumerate(rwx))
        return out

    def IsDir(self) -> bool:
        return bool(self & _GO_DIR)

    def IsRegular(self) -> bool:
        return not self & (_GO_DIR | _GO_SYMLINK)

    def Perm(self) -> int:
        return int(self) & 0o777

    def __str__(self) -> str:
        return self.String()


class FileInfo:
    def __init__(self, item: Item) -> None:
        self.Name = item.name
        self.Size = item.size
        self.URL = item.url
        self.ModTime = GoTime(dt.datetime.fromtimestamp(item.mtime_ns / 1e9, tz=dt.timezone.utc))
        self.Mode = GoFileMode(item.mode)
        self.IsDir = item.is_dir
        self.IsSymlink = item.is_symlink

    def HumanSize(self) -> str:
        return ibytes(self.Size)

    def HumanModTime(self, layout: Any) -> str:
        return self.ModTime.Format(str(layout))


class Crumb:
    def __init__(self, link: str, text: str) -> None:
        self.Link = link
        self.Text = text


class Listing(TemplateContext):
    def __init__(
        self,
        req: Request,
        files: FileServer,
        items: list[Item],
        sort: str,
        order: str,
        limit: int,
        can_go_up: bool,
        counts: tuple[int, int],
    ) -> None:
        super().__init__(req, files)
        path = req.path
        self.Name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        self.Path = path
        self.CanGoUp = can_go_up
        self.Items = [FileInfo(i) for i in items]
        self.NumDirs, self.NumFiles = counts  # of the whole folder, before any limit
        self.Sort = sort
        self.Order = order
        self.ItemsLimitedTo = limit if limit >= 0 else 0
        self.User = None

    def BreadcrumbMap(self) -> dict[str, str]:
        result: dict[str, str] = {}
        if not self.Path:
            return result
        lpath = self.Path[:-1] if self.Path.endswith("/") else self.Path
        parts = lpath.split("/")
        for i, part in enumerate(parts):
            if i == 0 and part == "":
                result["/"] = "/"
                continue
            result["/".join(parts[: i + 1])] = part
        return result

    def Breadcrumbs(self) -> list[Crumb]:
        """Caddy v1.0's crumbs, root first, with relative links (`../../`, `../`, ``)."""
        if not self.Path:
            return []
        lpath = self.Path[:-1] if self.Path.endswith("/") else self.Path
        parts = lpath.split("/")
        return [
            Crumb("../" * (len(parts) - i - 1), "/" if i == 0 and part == "" else part)
            for i, part in enumerate(parts)
        ]
