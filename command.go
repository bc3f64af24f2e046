package edgelimit

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// The `caddy edge-limit` command: the admin API of admin.go from a shell.

func init() {
	fs := flag.NewFlagSet("edge-limit", flag.ExitOnError)
	fs.String("address", "", "Address of the administration endpoint, if different from the config's")
	fs.String("config", "", "Configuration file to read the admin address from")
	fs.String("adapter", "", "Name of the config adapter of --config")
	fs.String("limit", "", "Name of the limit (as `limits` lists it)")
	fs.String("zone", "", "Zone of a route limit, when several routes have a limit of that name")
	fs.String("key", "", "The client's key as the limit reads it (header value, IP, user id); - reads it from stdin")
	fs.Int("part", -1, "Key part (0-based) of a key of several parts; default every part")
	fs.String("storage", "", "memory or redis: picks a shared limit counted by two stores")
	fs.String("tier", "", "Tier whose numbers to inspect or credit with (default: clients in no known tier)")
	fs.Int64("units", 0, "Units to credit")
	fs.Bool("all", false, "reset: every limit of the key")
	fs.Bool("json", false, "Print the API's JSON answer")
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "edge-limit",
		Usage: "limits|inspect|reset|credit [--limit <name>] [--zone <zone>] [--key <key>|-] [--part <n>] [--units <n>] [--all] [--json] [--address <interface>] [--config <path> [--adapter <name>]]",
		Short: "Inspects, resets and credits the rate-limit counters of one client",
		Long: `
Talks to the edge_limit routes of the running Caddy's admin API:

  caddy edge-limit limits
      the limits of the running configuration (names, zones, numbers)
  caddy edge-limit inspect --limit NAME [--zone Z] --key KEY [--tier T]
      the client's count, remaining, reset time, and whether it is denied now;
      a peek: it counts nothing
  caddy edge-limit reset --limit NAME|--all --key KEY
      forget the client's state for one limit, or for every limit
  caddy edge-limit credit --limit NAME --key KEY --units N
      give the client N more units now (never beyond a full window or bucket)

KEY is what the limit reads from a request: the raw header value, the IP
address, the user id. --key - reads it from standard input (one line), so
that a credential is not in the shell's history. A key of several parts
counts each part apart: every part is answered unless --part names one.

The admin address is --address, else the one of --config, else Caddy's
default (localhost:2019). --json prints the API's answer as it is.
`,
		Flags: fs,
		Func:  cmdEdgeLimit,
	})
}

func cmdEdgeLimit(fl caddycmd.Flags) (int, error) {
	args := fl.Args()
	if len(args) != 1 {
		return caddy.ExitCodeFailedStartup, errors.New("want one of: limits, inspect, reset, credit (caddy help edge-limit)")
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("finding the admin address: %v", err)
	}
	out := os.Stdout
	asJSON := fl.Bool("json")
	sub := args[0]
	if sub == "limits" {
		body, err := adminCall(addr, http.MethodGet, "/edge_limit/limits", nil)
		if err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
		if asJSON {
			_, err = out.Write(body)
			return 0, err
		}
		return printLimits(out, body)
	}
	req := map[string]any{}
	if v := fl.String("limit"); v != "" {
		req["limit"] = v
	}
	if v := fl.String("zone"); v != "" {
		req["zone"] = v
	}
	if v := fl.String("tier"); v != "" {
		req["tier"] = v
	}
	if p, _ := fl.GetInt("part"); p >= 0 {
		req["part"] = p
	} else if p != -1 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("--part %d: a key part is 0 or more (leave it out for every part)", p)
	}
	if v := fl.String("storage"); v != "" {
		req["storage"] = v
	}
	key := fl.String("key")
	if key == "-" {
		b, err := io.ReadAll(io.LimitReader(os.Stdin, maxAdminKey+2))
		if err != nil {
			return caddy.ExitCodeFailedStartup, fmt.Errorf("reading the key from stdin: %v", err)
		}
		key = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	}
	if key == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--key is required (- reads it from stdin)")
	}
	req["key"] = key
	switch sub {
	case "inspect":
	case "reset":
		all := fl.Bool("all")
		if all == (req["limit"] != nil) {
			return caddy.ExitCodeFailedStartup, errors.New("reset: give --limit NAME or --all")
		}
	case "credit":
		units, _ := fl.GetInt64("units")
		if units < 1 {
			return caddy.ExitCodeFailedStartup, errors.New("credit: --units N is required, at least 1")
		}
		req["units"] = units
	default:
		return caddy.ExitCodeFailedStartup, fmt.Errorf("unknown subcommand %q: want limits, inspect, reset or credit", sub)
	}
	if sub != "reset" && req["limit"] == nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%s: --limit NAME is required (caddy edge-limit limits lists them)", sub)
	}
	payload, _ := json.Marshal(req)
	body, err := adminCall(addr, http.MethodPost, "/edge_limit/"+sub, payload)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if asJSON {
		_, err = out.Write(body)
		return 0, err
	}
	if sub == "reset" {
		return printReset(out, body)
	}
	return printInspect(out, body)
}

// adminCall sends a request to the admin API and returns the body of a
// success, or the API's error message.
func adminCall(addr, method, uri string, payload []byte) ([]byte, error) {
	var body io.Reader
	hdr := http.Header{}
	if payload != nil {
		body = bytes.NewReader(payload)
		hdr.Set("Content-Type", "application/json")
	}
	resp, err := caddycmd.AdminAPIRequest(addr, method, uri, hdr, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// numbersText is a limit's numbers in a few words.
func numbersText(n NumbersInfo) string {
	var s string
	switch {
	case n.Calendar != "":
		s = fmt.Sprintf("%d per %s", n.Limit, n.Calendar)
	case n.Algorithm == "token_bucket":
		s = fmt.Sprintf("capacity %d, %d per %s", n.Limit, n.Refill, n.Window)
	case n.Algorithm == "gcra":
		s = fmt.Sprintf("burst %d, %d per %s", n.Limit, n.Refill, n.Window)
	default:
		s = fmt.Sprintf("%d per %s", n.Limit, n.Window)
	}
	if n.Split != "" {
		s += " split " + n.Split
	}
	return s
}

func printLimits(w io.Writer, body []byte) (int, error) {
	var v struct {
		Limits []LimitInfo `json:"limits"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return 1, fmt.Errorf("reading the answer: %v", err)
	}
	tw := table(w)
	fmt.Fprintln(tw, "NAME\tZONE\tSCOPE\tALGORITHM\tNUMBERS\tKEY\tEXEMPT\tSTORAGE")
	for _, l := range v.Limits {
		nums := numbersText(l.Numbers)
		if len(l.Tiers) > 0 {
			nums += fmt.Sprintf(" (+%d tiers by %s)", len(l.Tiers), l.Tier)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, dash(l.Zone), l.Scope, l.Numbers.Algorithm, nums,
			strings.Join(l.Key, " "), dash(strings.Join(l.Exempt, ",")), l.Storage)
	}
	return 0, tw.Flush()
}

func printInspect(w io.Writer, body []byte) (int, error) {
	var v InspectResponse
	if err := json.Unmarshal(body, &v); err != nil {
		return 1, fmt.Errorf("reading the answer: %v", err)
	}
	where := v.Scope
	if v.Zone != "" {
		where += ", zone " + v.Zone
	}
	tier := ""
	if v.Tier != "" {
		tier = ", tier " + v.Tier
	}
	fmt.Fprintf(w, "limit %s (%s, %s storage%s): %s %s\n", v.Limit, where, v.Storage, tier, v.Numbers.Algorithm, numbersText(v.Numbers))
	tw := table(w)
	credit := len(v.Parts) > 0 && v.Parts[0].Given != nil
	head := "PART\tKEY\tLIMIT\tUSED\tREMAINING\tDENYING\tRETRY AFTER\tRESET"
	if credit {
		head += "\tGIVEN"
	}
	fmt.Fprintln(tw, head)
	for _, p := range v.Parts {
		retry := "-"
		if p.Denying {
			retry = strconv.FormatInt(p.RetryAfterSeconds, 10) + "s"
		}
		denying := "no"
		if p.Denying {
			denying = "yes"
		}
		line := fmt.Sprintf("%d\t%s\t%d\t%d\t%d\t%s\t%s\t%s (%d)", p.Part, p.Key, p.Limit, p.Used, p.Remaining, denying, retry, p.Reset, p.ResetUnix)
		if credit {
			line += "\t" + strconv.FormatInt(*p.Given, 10)
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return 1, err
	}
	return 0, printWarnings(w, v.Warnings)
}

// printWarnings writes what the admin API says went wrong after a change
// was made: the change stands (the command succeeds), so repeating it
// would repeat the change.
func printWarnings(w io.Writer, warnings []string) error {
	for _, m := range warnings {
		if _, err := fmt.Fprintln(w, "warning:", m); err != nil {
			return err
		}
	}
	return nil
}

func printReset(w io.Writer, body []byte) (int, error) {
	var v ResetResponse
	if err := json.Unmarshal(body, &v); err != nil {
		return 1, fmt.Errorf("reading the answer: %v", err)
	}
	tw := table(w)
	fmt.Fprintln(tw, "RESET\tZONE\tSTORAGE\tPARTS\tUSED BEFORE")
	for _, r := range v.Reset {
		parts := make([]string, len(r.Parts))
		for i, p := range r.Parts {
			parts[i] = strconv.Itoa(p)
		}
		used := make([]string, len(r.UsedBefore))
		for i, u := range r.UsedBefore {
			used[i] = strconv.FormatInt(u, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Limit, dash(r.Zone), r.Storage, strings.Join(parts, ","), dash(strings.Join(used, ",")))
	}
	if err := tw.Flush(); err != nil {
		return 1, err
	}
	return 0, printWarnings(w, v.Warnings)
}
