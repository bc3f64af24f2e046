// Package docs_test loads every Caddyfile that README.md and docs/*.md show
// into Caddy, as `caddy validate` would: adapted by the Caddyfile adapter,
// then every module provisioned. A page cannot show a configuration that
// Caddy with this plugin refuses.
//
// The convention for the pages' code blocks:
//
//   - ```caddyfile: a whole Caddyfile, loaded as it is. A global options
//     block alone is a whole Caddyfile.
//   - ```caddyfile-fragment: the inside of a site block (directives,
//     matchers, map...), written unindented, loaded indented by one tab
//     inside `:8080 { ... respond "ok" }`.
//
// Each block must also be as `caddy fmt` writes it (a fragment as a
// top-level Caddyfile would be): a user who copies one gets no "Caddyfile
// input is not formatted" warning.
//
// Any other fence whose language mentions caddyfile is an error, so that no
// block escapes the test by its spelling.
package docs_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/edgelimit/caddy-edgelimit"
	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

const (
	langWhole    = "caddyfile"
	langFragment = "caddyfile-fragment"
)

// block is one fenced code block of a page.
type block struct {
	file string // relative to the repository root
	line int    // of the opening fence, 1-based
	lang string
	body string
}

func (b block) name() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// pages are README.md and docs/*.md, relative to the repository root.
func pages(t *testing.T) []string {
	t.Helper()
	docs, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	files := []string{"README.md"}
	for _, d := range docs {
		files = append(files, "docs/"+d)
	}
	return files
}

// readPage reads a page given relative to the repository root.
func readPage(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", filepath.FromSlash(file)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// fences returns the fenced code blocks of a Markdown text. A fence may be
// indented (inside a list item); its closing line is a bare ``` at any
// indentation. An unclosed fence is an error.
func fences(file, text string) ([]block, error) {
	var out []block
	var cur *block
	var body []string
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur == nil {
			if strings.HasPrefix(trimmed, "```") {
				cur = &block{file: file, line: i + 1, lang: strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))}
				body = body[:0]
			}
			continue
		}
		if trimmed == "```" {
			cur.body = strings.Join(body, "\n") + "\n"
			out = append(out, *cur)
			cur = nil
			continue
		}
		body = append(body, line)
	}
	if cur != nil {
		return out, fmt.Errorf("%s: the fence opened at line %d is never closed", cur.file, cur.line)
	}
	return out, nil
}

// caddyfileBlocks returns the blocks to load, and an error for each fence
// whose language mentions caddyfile but is not one of the two conventions.
func caddyfileBlocks(blocks []block) (load []block, errs []error) {
	for _, b := range blocks {
		switch {
		case b.lang == langWhole || b.lang == langFragment:
			load = append(load, b)
		case strings.Contains(strings.ToLower(b.lang), "caddyfile"):
			errs = append(errs, fmt.Errorf("%s: fence language %q: want %q (a whole Caddyfile) or %q (the inside of a site)", b.name(), b.lang, langWhole, langFragment))
		}
	}
	return load, errs
}

// source is the Caddyfile the block stands for: a whole block as it is; a
// fragment, written as a top-level Caddyfile would be, indented by one tab
// inside `:8080 { ... respond "ok" }`.
func (b block) source() string {
	if b.lang != langFragment {
		return b.body
	}
	lines := strings.SplitAfter(strings.TrimSuffix(b.body, "\n"), "\n")
	for i, l := range lines {
		if strings.TrimSpace(l) != "" {
			lines[i] = "\t" + l
		}
	}
	return ":8080 {\n" + strings.Join(lines, "") + "\n\trespond \"ok\"\n}\n"
}

// formatted checks that `caddy fmt` would leave the block as it is, naming
// the page's line of the first difference.
func (b block) formatted() error {
	first := b.line + 1 // the body starts on the line after the fence
	if b.lang == langFragment {
		first-- // the site's opening line is not on the page
	}
	return e2e.Unformatted(b.file, first, b.source())
}

// caddyfile is the block's source loaded with every Redis address it names
// moved to a closed loopback port: provisioning tries Redis (and only logs
// that it is unreachable), and a test reaches no other host, nor the
// machine's own Redis.
func (b block) caddyfile() string {
	return redisLine.ReplaceAllStringFunc(b.source(), func(line string) string {
		return hostPort.ReplaceAllString(line, "${1}127.0.0.1:"+closedPort())
	})
}

var (
	redisLine = regexp.MustCompile(`(?m)^.*(rediss?://|\baddrs\b).*$`)
	hostPort  = regexp.MustCompile(`(@|//|\s)[A-Za-z0-9.\-]+:\d+`)
)

// closedPort is a loopback port nobody listens on.
var closedPort = sync.OnceValue(func() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
})

// load adapts the block's Caddyfile and validates the JSON: every app and
// module is provisioned, then cleaned up; nothing listens.
func load(b block) error {
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return fmt.Errorf("no caddyfile adapter")
	}
	cfgJSON, warnings, err := adapter.Adapt([]byte(b.caddyfile()), map[string]any{"filename": b.name()})
	if err != nil {
		return fmt.Errorf("adapt: %w", err)
	}
	if len(warnings) > 0 {
		// "Caddyfile input is not formatted" among them: a page shows
		// what a user copies, and Caddy would print it at every start.
		return fmt.Errorf("adapt: warning: %s", warnings[0])
	}
	var cfg caddy.Config
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return fmt.Errorf("adapted JSON: %w", err)
	}
	if cfg.Logging == nil {
		// Errors only: provisioning logs (an unreachable Redis, say) are
		// expected here and would bury a failure's message.
		cfg.Logging = &caddy.Logging{Logs: map[string]*caddy.CustomLog{
			"default": {BaseLog: caddy.BaseLog{Level: "ERROR"}},
		}}
	}
	if err := caddy.Validate(&cfg); err != nil {
		return fmt.Errorf("validate: %w", err)
	}
	return nil
}

// TestConfigBlocksLoad adapts and validates every Caddyfile block of the
// pages, one subtest per block named after its file and line.
func TestConfigBlocksLoad(t *testing.T) {
	// Placeholders the blocks read from the environment.
	t.Setenv("HOOK_TOKEN", "docs-test-token")
	t.Setenv("REDIS_PASSWORD", "docs-test-password")

	total := 0
	for _, file := range pages(t) {
		blocks, err := fences(file, readPage(t, file))
		if err != nil {
			t.Error(err)
		}
		toLoad, errs := caddyfileBlocks(blocks)
		for _, err := range errs {
			t.Error(err)
		}
		t.Logf("%s: %d Caddyfile blocks", file, len(toLoad))
		total += len(toLoad)
		for _, b := range toLoad {
			t.Run(b.name(), func(t *testing.T) {
				if err := b.formatted(); err != nil {
					t.Error(err)
				}
				if err := load(b); err != nil {
					t.Errorf("%s (%s block):\n%s\n%v", b.name(), b.lang, b.caddyfile(), err)
				}
			})
		}
	}
	if total == 0 {
		t.Fatal("no Caddyfile block found")
	}
}

// TestBrokenBlocksFail makes sure the test above can fail: a broken
// directive, an unknown fence language and an unclosed fence are caught.
func TestBrokenBlocksFail(t *testing.T) {
	broken := []block{
		{file: "broken.md", line: 1, lang: langWhole, body: ":8080 {\n\tedge_limit {\n\t\tlimit x {\n\t\t\trate 5/1m\n\t\t\ttoken_bucket 3 1/1s\n\t\t}\n\t}\n}\n"},
		{file: "broken.md", line: 2, lang: langFragment, body: "\tedge_limit {\n\t\tlimit x {\n\t\t\tratee 5/1m\n\t\t}\n\t}\n"},
		{file: "broken.md", line: 3, lang: langWhole, body: "{\n\tedge_limit {\n\t\tstorage redis {\n\t\t\turl redis://127.0.0.1:6379/0\n\t\t\taddrs 127.0.0.1:7000\n\t\t}\n\t}\n}\n"},
		{file: "broken.md", line: 4, lang: langWhole, body: "{\n\tevents {\n\t\ton edge_limit.exceeded exec /bin/true\n\t}\n}\n"},
	}
	for _, b := range broken {
		if err := load(b); err == nil {
			t.Errorf("%s loads:\n%s", b.name(), b.caddyfile())
		}
	}
	// Aligned trailing comments, as the README's example once had them:
	// it loads, but caddy fmt would rewrite line 3 of the block.
	aligned := block{file: "broken.md", line: 10, lang: langWhole, body: ":8080 {\n\tedge_limit {\n\t\tlimit x {   # per client\n\t\t\trate 5/1m\n\t\t}\n\t}\n}\n"}
	if err := aligned.formatted(); err == nil || !strings.Contains(err.Error(), "broken.md:13:") {
		t.Errorf("an unformatted block: %v", err)
	}
	if err := load(aligned); err == nil || !strings.Contains(err.Error(), "not formatted") {
		t.Errorf("the adapter's formatting warning is ignored: %v", err)
	}
	fragment := block{file: "broken.md", line: 20, lang: langFragment, body: "@get method GET\nhandle @get {\n  respond \"hi\"\n}\n"}
	if err := fragment.formatted(); err == nil || !strings.Contains(err.Error(), "broken.md:23:") {
		t.Errorf("an unformatted fragment: %v", err)
	}
	fragment.body = strings.ReplaceAll(fragment.body, "  ", "\t")
	if err := fragment.formatted(); err != nil {
		t.Errorf("a formatted fragment: %v", err)
	}
	_, errs := caddyfileBlocks([]block{{file: "x.md", line: 7, lang: "Caddyfile-snippet"}})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "x.md:7") {
		t.Errorf("unknown fence language: %v", errs)
	}
	if _, err := fences("x.md", "text\n```caddyfile\n:8080\n"); err == nil {
		t.Error("an unclosed fence is not an error")
	}
	got, err := fences("x.md", "a\n\n   ```caddyfile-fragment\n   respond \"hi\"\n   ```\n```sh\nls\n```\n")
	if err != nil || len(got) != 2 || got[0].line != 3 || got[0].lang != langFragment || got[1].lang != "sh" {
		t.Errorf("fences: %+v %v", got, err)
	}
}

// leadingComments strips an example file's leading comment and blank lines.
var leadingComments = regexp.MustCompile(`\A(?:#[^\n]*\n|\n)*`)

// TestPoliciesShowExamples: docs/policies.md shows each examples/*.Caddyfile
// as it is, after its leading comment lines, in a caddyfile block.
func TestPoliciesShowExamples(t *testing.T) {
	page := readPage(t, "docs/policies.md")
	files, err := filepath.Glob("../examples/*.Caddyfile")
	if err != nil || len(files) != 7 {
		t.Fatalf("examples: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		code := strings.TrimRight(leadingComments.ReplaceAllString(string(b), ""), "\n")
		if !strings.Contains(page, "```"+langWhole+"\n"+code+"\n```") {
			t.Errorf("docs/policies.md does not show examples/%s as it is", filepath.Base(f))
		}
	}
}

// TestCaddyRateLimitPage: the caddy-ratelimit README example that
// docs/caddy-ratelimit.md quotes, with only the directive renamed, is
// refused with the error the page shows, which points back to the page.
func TestCaddyRateLimitPage(t *testing.T) {
	const file = "docs/caddy-ratelimit.md"
	blocks, err := fences(file, readPage(t, file))
	if err != nil {
		t.Fatal(err)
	}
	var theirs, shown string
	for _, b := range blocks {
		switch {
		case b.lang == "" && strings.Contains(b.body, "rate_limit {") && theirs == "":
			theirs = b.body
		case b.lang == "" && strings.HasPrefix(b.body, "unknown edge_limit option") && shown == "":
			shown = b.body
		}
	}
	if theirs == "" || shown == "" {
		t.Fatalf("%s: no caddy-ratelimit example, or no error after it", file)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	ported := strings.ReplaceAll(theirs, "rate_limit", "edge_limit")
	_, _, err = adapter.Adapt([]byte(ported), map[string]any{"filename": "Caddyfile"})
	if err == nil {
		t.Fatalf("the ported example loads:\n%s", ported)
	}
	oneLine := func(s string) string { return strings.Join(strings.Fields(s), " ") }
	if !strings.Contains(oneLine(err.Error()), oneLine(shown)) || !strings.Contains(err.Error(), file) {
		t.Fatalf("%s shows the error\n%s\nCaddy says\n%v", file, shown, err)
	}
}
