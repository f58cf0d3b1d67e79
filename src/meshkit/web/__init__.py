"""`meshkit web`: a Caddyfile-driven web server (Caddy v1's grammar and directives).

caddyfile/   lexer, parser, addresses, imports and snippets -> Sites
directives/  one module per directive: parse (tokens -> config) and build (-> handler)
message.py   Request, Response, Headers: what handlers take and give
site.py      a site's addresses and site-wide settings
router.py    Host header and path -> the site's handler chain
server.py    the HTTP/1.1 server (uvloop + httptools) and the sendfile send path
fileserver.py the static file server at the end of every chain
"""
