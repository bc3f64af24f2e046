package e2e

import (
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Unformatted compares a Caddyfile with what `caddy fmt` makes of it
// (caddyfile.Format, which Caddy's adapter also compares with before it
// warns "Caddyfile input is not formatted"). It returns nil when fmt would
// leave body as it is, else an error naming name, the first line that
// differs (body's first line is line firstLine), and both versions of it.
func Unformatted(name string, firstLine int, body string) error {
	want := string(caddyfile.Format([]byte(body)))
	if want == body {
		return nil
	}
	got, fmted := strings.Split(body, "\n"), strings.Split(want, "\n")
	i := 0
	for i < len(got) && i < len(fmted) && got[i] == fmted[i] {
		i++
	}
	return fmt.Errorf("%s:%d: not formatted as `caddy fmt` writes it:\n  the file:  %q\n  caddy fmt: %q",
		name, firstLine+i, lineAt(got, i), lineAt(fmted, i))
}

// lineAt is line i of lines, or a note that there is none.
func lineAt(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return "(end of file)"
}
