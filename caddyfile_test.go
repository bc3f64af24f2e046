package edgelimit

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/edgelimit/caddy-edgelimit/internal/e2e"
)

// adapt turns a Caddyfile into JSON as `caddy adapt` does.
func adapt(t *testing.T, body string) ([]byte, error) {
	t.Helper()
	a := caddyfile.Adapter{ServerType: httpcaddyfile.ServerType{}}
	out, _, err := a.Adapt([]byte(body), map[string]any{"filename": "Caddyfile"})
	return out, err
}

// handlersOf returns the edge_limit handlers of an adapted config.
func handlersOf(t *testing.T, cfg []byte) []Handler {
	t.Helper()
	var found []Handler
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if x["handler"] == "edge_limit" {
				b, _ := json.Marshal(x)
				var h Handler
				if err := json.Unmarshal(b, &h); err != nil {
					t.Fatal(err)
				}
				found = append(found, h)
				return
			}
			for _, c := range x {
				walk(c)
			}
		case []any:
			for _, c := range x {
				walk(c)
			}
		}
	}
	var v any
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	walk(v)
	return found
}

func TestCaddyfileZones(t *testing.T) {
	limit := "edge_limit {\n\t\tlimit a {\n\t\t\trate 5/1m\n\t\t}\n\t}"
	cfg, err := adapt(t, ":8080 {\n\thandle /x {\n\t"+limit+"\n\t}\n\thandle /y {\n\t"+limit+"\n\t}\n}\n:8081 {\n\t"+strings.Replace(limit, "5/1m", "6/1m", 1)+"\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	hs := handlersOf(t, cfg)
	if len(hs) != 3 {
		t.Fatalf("%d handlers", len(hs))
	}
	zones := map[string]bool{}
	for _, h := range hs {
		if h.Zone == "" || zones[h.Zone] {
			t.Fatalf("zones not distinct: %v then %q", zones, h.Zone)
		}
		zones[h.Zone] = true
	}
	again, _ := adapt(t, ":8080 {\n\thandle /x {\n\t"+limit+"\n\t}\n\thandle /y {\n\t"+limit+"\n\t}\n}\n:8081 {\n\t"+strings.Replace(limit, "5/1m", "6/1m", 1)+"\n}\n")
	for _, h := range handlersOf(t, again) {
		if !zones[h.Zone] {
			t.Fatalf("zone %q changed between two adaptations", h.Zone)
		}
	}
}

func TestGlobalOptionDeclaresSharedLimits(t *testing.T) {
	cfg, err := adapt(t, "{\n\tedge_limit {\n\t\tstorage memory {\n\t\t\tmax_keys 100\n\t\t}\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(cfg, &v); err != nil {
		t.Fatal(err)
	}
	if got := string(v.Apps["edge_limit"]); got != `{"storage":{"backend":"memory","max_keys":100}}` {
		t.Fatalf("edge_limit app: %s", got)
	}
	_, err = adapt(t, "{\n\tedge_limit {\n\t\tlimits 3\n\t}\n}\n:8080 {\n\trespond ok\n}\n")
	if err == nil || !strings.Contains(err.Error(), "Caddyfile:3") {
		t.Fatalf("bad global option: %v", err)
	}
}

func TestDirectiveOrder(t *testing.T) {
	// No order line: edge_limit runs before respond and reverse_proxy, after
	// basic_auth.
	cfg, err := adapt(t, `:8080 {
	respond "ok"
	edge_limit {
		limit a {
			rate 1/1m
		}
	}
	basic_auth {
		bob $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG
	}
}`)
	if err != nil {
		t.Fatal(err)
	}
	s := string(cfg)
	auth, limit, respond := strings.Index(s, `"authentication"`), strings.Index(s, `"edge_limit"`), strings.Index(s, `"static_response"`)
	if auth < 0 || limit < 0 || respond < 0 || !(auth < limit && limit < respond) {
		t.Fatalf("order: authentication %d, edge_limit %d, respond %d in %s", auth, limit, respond, s)
	}
}

// TestCaddyValidateCommand runs the real `caddy validate` on bad and good
// Caddyfiles, as an operator would.
func TestCaddyValidateCommand(t *testing.T) {
	bin := e2e.CaddyBinary(t)
	dir := t.TempDir()
	run := func(body string) (string, error) {
		f := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return e2e.Command(bin, dir, nil, "validate", "--config", f, "--adapter", "caddyfile")
	}
	out, err := run(":0 {\n\tedge_limit {\n\t\tlimit a {\n\t\t\trate 5/xyz\n\t\t}\n\t}\n\trespond ok\n}\n")
	if err == nil || !strings.Contains(out, `bad duration \"xyz\"`) || !strings.Contains(out, "Caddyfile:4") {
		t.Fatalf("bad Caddyfile: err %v\n%s", err, out)
	}
	example, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run(string(example)); err != nil || strings.Contains(out, "not formatted") {
		t.Fatalf("example.Caddyfile does not validate cleanly: %v\n%s", err, out)
	}
	// The JSON form the README documents adapts from the example.
	cmd := exec.Command(bin, "adapt", "--config", "example.Caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	js, err := cmd.Output()
	if err != nil {
		t.Fatalf("caddy adapt: %v", err)
	}
	if !strings.Contains(string(js), `"handler":"edge_limit"`) || !strings.Contains(string(js), `"algorithm":"token_bucket"`) {
		t.Fatalf("adapted example: %s", js)
	}
	if err := caddyconfig.GetAdapter("caddyfile"); err == nil {
		t.Fatal("no caddyfile adapter")
	}
}

// TestCaddyRateLimitHints: caddy-ratelimit's rate_limit options, written
// in edge_limit, are refused at their line with what to write instead.
func TestCaddyRateLimitHints(t *testing.T) {
	site := func(block string) string {
		return ":8080 {\n\tedge_limit {\n" + indent(block) + "\n\t}\n\trespond ok\n}\n"
	}
	cases := []struct{ name, body, want, line string }{
		{"zone", site("zone dynamic {\n\tkey {remote_host}\n\tevents 2\n\twindow 5s\n}"), `unknown edge_limit block "zone <name> { ... }": edgelimit calls a zone a limit: write "limit <name> { key ...; rate <events>/<window> }"`, "Caddyfile:3"},
		{"distributed", site("distributed {\n\tread_interval 5s\n}"), `unknown edge_limit option "distributed": counts are shared exactly through Redis: write "storage redis <url>"`, "Caddyfile:3"},
		{"jitter", site("jitter 0.2"), `unknown edge_limit option "jitter": Retry-After is the exact wait`, "Caddyfile:3"},
		{"sweep_interval", site("sweep_interval 1m"), `unknown edge_limit option "sweep_interval": it belongs to the storage: write "storage memory { sweep_interval <duration> }"`, "Caddyfile:3"},
		{"log_key", site("log_key"), `unknown edge_limit option "log_key": denials are logged with the key as show_key says (hashed by default): write "show_key raw"`, "Caddyfile:3"},
		{"global option", "{\n\tedge_limit {\n\t\tdistributed\n\t}\n}\n:8080 {\n\trespond ok\n}\n", `unknown edge_limit global option "distributed": counts are shared exactly through Redis`, "Caddyfile:3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := adapt(t, c.body)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.line) ||
				!strings.Contains(err.Error(), "see docs/caddy-ratelimit.md") {
				t.Fatalf("error %v, want %q at %s, pointing to docs/caddy-ratelimit.md\n%s", err, c.want, c.line, c.body)
			}
		})
	}
	// edge_limit's own zone, a name without a block, is still accepted.
	if _, err := adapt(t, site("limit a {\n\trate 5/1m\n}\nzone api")); err != nil {
		t.Fatalf("zone <name>: %v", err)
	}
}

// TestCaddyRateLimitReadmeExample ports the Caddyfile example of
// caddy-ratelimit's README (github.com/mholt/caddy-ratelimit) as a user
// would first try: the directive renamed, the rest as it is. The error
// names the first line to change and points to the page that maps the rest.
func TestCaddyRateLimitReadmeExample(t *testing.T) {
	readme := "{\n\torder rate_limit before basicauth\n}\n\n:80\n\nrate_limit {\n\tdistributed\n\tzone static_example {\n\t\tkey    static\n\t\tevents 100\n\t\twindow 1m\n\t}\n\tzone dynamic_example {\n\t\tkey    {remote_host}\n\t\tevents 2\n\t\twindow 5s\n\t}\n}\n\nrespond \"I'm behind the rate limiter!\"\n"
	ported := strings.ReplaceAll(readme, "rate_limit", "edge_limit")
	_, err := adapt(t, ported)
	if err == nil || !strings.Contains(err.Error(), `unknown edge_limit option "distributed"`) ||
		!strings.Contains(err.Error(), "Caddyfile:8") || !strings.Contains(err.Error(), "see docs/caddy-ratelimit.md") {
		t.Fatalf("ported README example: %v\n%s", err, ported)
	}
	// Without distributed, the zones are next.
	_, err = adapt(t, strings.Replace(ported, "\tdistributed\n", "", 1))
	if err == nil || !strings.Contains(err.Error(), `"zone <name> { ... }": edgelimit calls a zone a limit`) ||
		!strings.Contains(err.Error(), "Caddyfile:8") || !strings.Contains(err.Error(), "see docs/caddy-ratelimit.md") {
		t.Fatalf("ported README example without distributed: %v", err)
	}
}

// TestExampleFormatted: the README's first command runs example.Caddyfile,
// which must be as `caddy fmt` writes it.
func TestExampleFormatted(t *testing.T) {
	body, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if err := e2e.Unformatted("example.Caddyfile", 1, string(body)); err != nil {
		t.Error(err)
	}
}

// FuzzCaddyfile feeds edge_limit blocks to the Caddyfile adapter and then
// to provisioning: any input must give a config or an error, never a panic
// or a hang.
func FuzzCaddyfile(f *testing.F) {
	seeds := []string{
		"limit a {\n\trate 5/1m\n}",
		"limit a {\n\tkey {header.X} {client_ip} lit\n\ttoken_bucket 3 1/1s\n}",
		"limit a {\n\trate 5/1m\n\twindow sliding\n\tsplit 10s\n}",
		"limit a {\n\tgcra 10/1s burst 3\n}",
		"limit a {\n\tquota 5 per month at 06:00 in Europe/Paris\n}",
		"quota q {\n\tlimit 5 per day\n\treset 00:00 UTC\n\texempt a b\n}",
		"quota q {\n\tlimit 5 per 90s aligned\n}",
		"limit a {\n\ttier {t} {\n\t\tA rate 5/1m\n\t\tB rate 9/1m\n\t\tdefault A\n\t}\n}",
		"limit a {\n\trate 5/1m\n\tstatus 420\n\tbody `{\"e\":\"{edge_limit.name}\"}`\n}\nheaders both time",
		"limit a {\n\trate 0/0\n}",
		"limit a {\n\trate 5/-1m\n}",
		"limit a {\n\ttoken_bucket 9223372036854775807 9223372036854775807/1ns\n}",
		"limit a {\n\ttoken_bucket 1000000000000 1/366d\n}",
		"limit a {\n\tgcra 1/366d burst 1099511627776\n\tcost 1099511627776\n}",
		"limit a {\n\trate 2/1m\n\tcost 3\n}",
		"limit {\n}",
		"use a b c",
		"limit a",
		"storage memory {\n\tmax_keys 1\n}",
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, block string) {
		if strings.Contains(block, "import") || strings.Contains(block, "{$") {
			t.Skip("file imports and environment reads are not the parser's input")
		}
		body := ":8080 {\n\tedge_limit {\n" + block + "\n\t}\n\trespond ok\n}\n"
		cfg, err := adapt(t, body)
		if err != nil {
			return
		}
		for _, h := range handlersOf(t, cfg) {
			_ = validateHandler(t, &h)
		}
	})
}

// TestUnknownOptionsSuggest: a misspelled option is refused at its line
// with the option meant, as the Traefik plugin suggests it.
func TestUnknownOptionsSuggest(t *testing.T) {
	for body, want := range map[string]string{
		":0 {\n\tedge_limit {\n\t\tlimit l {\n\t\t\trate 5/1m\n\t\t}\n\t\tstauts 503\n\t}\n}\n":       `unknown edge_limit option "stauts" (did you mean "status"?), at Caddyfile:6`,
		":0 {\n\tedge_limit {\n\t\tlimit l {\n\t\t\trate 5/1m\n\t\t\texmpt a\n\t\t}\n\t}\n}\n":        `unknown option "exmpt" in limit "l" (did you mean "exempt"?), at Caddyfile:5`,
		"{\n\tedge_limit {\n\t\tstorag memory\n\t}\n}\n:0 {\n\trespond ok\n}\n":                       `unknown edge_limit global option "storag" (did you mean "storage"?), at Caddyfile:3`,
		":0 {\n\tedge_limit {\n\t\tlimit l {\n\t\t\trate 5/1m\n\t\t}\n\t\tsomething_else 1\n\t}\n}\n": `unknown edge_limit option "something_else", at Caddyfile:6`,
	} {
		_, err := adapt(t, body)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v, want %s", err, want)
		}
	}
}
