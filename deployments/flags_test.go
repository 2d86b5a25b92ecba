package deployments

import (
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

// flagsFile is where the product declares serve's flags. The manifests are
// checked against it, so renaming a flag there without updating the
// DaemonSet fails here rather than in a cluster.
var flagsFile = filepath.Join("..", "internal", "cli", "flags.go")

// serveFlags returns the long flag names `gpublocks serve` accepts: the
// flags registered by addServeFlags in flags.go (following its calls to
// other add*Flags functions there) plus klog's flags, which main.go adds to
// every command. Reading the source keeps this module free of the product's
// cgo build; when GPUBLOCKS_BIN names a built binary (as `make e2e` sets
// it), the list is also checked against its `serve --help`.
func serveFlags(t *testing.T) map[string]bool {
	t.Helper()
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, flagsFile, nil, 0)
	if err != nil {
		t.Fatalf("reading serve's flags: %v", err)
	}
	funcs := map[string]*ast.FuncDecl{}
	for _, d := range file.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok {
			funcs[fd.Name.Name] = fd
		}
	}
	flags := map[string]bool{}
	seen := map[string]bool{}
	var visit func(name string)
	visit = func(name string) {
		fd := funcs[name]
		if fd == nil || seen[name] {
			return
		}
		seen[name] = true
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			switch fn := call.Fun.(type) {
			case *ast.Ident: // addDiscoveryFlags(fs, o)
				visit(fn.Name)
			case *ast.SelectorExpr: // fs.StringVar(&o.X, "name", ...), fs.Bool("name", ...)
				pos := 0
				if strings.HasSuffix(fn.Sel.Name, "Var") || strings.HasSuffix(fn.Sel.Name, "VarP") {
					pos = 1
				}
				if len(call.Args) > pos {
					if lit, ok := call.Args[pos].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						if s, err := strconv.Unquote(lit.Value); err == nil {
							flags[s] = true
						}
					}
				}
			}
			return true
		})
	}
	visit("addServeFlags")
	for _, want := range []string{"config", "node-name", "cdi-dir", "device-plugin-dir", "metrics-addr"} {
		if !flags[want] {
			t.Fatalf("%s: addServeFlags no longer registers --%s (found %v); update the manifests and this test", flagsFile, want, keys(flags))
		}
	}
	// main.go adds klog's flags (-v, …) to every command.
	kfs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(kfs)
	kfs.VisitAll(func(f *flag.Flag) { flags[f.Name] = true })

	if bin := os.Getenv("GPUBLOCKS_BIN"); bin != "" {
		out, err := exec.Command(bin, "serve", "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("%s serve --help: %v\n%s", bin, err, out)
		}
		for f := range flags {
			if !strings.Contains(string(out), "--"+f+" ") && !strings.Contains(string(out), "--"+f+"=") && !strings.Contains(string(out), "-"+f+",") {
				t.Errorf("flags.go declares --%s but `%s serve --help` does not list it:\n%s", f, bin, out)
			}
		}
	}
	return flags
}

// parseArgs splits a container's args after the subcommand into flag name →
// value ("--a=b", "-v=2", and "--a b" forms).
func parseArgs(t *testing.T, args []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			t.Fatalf("argument %q is not a flag (args %q)", a, args)
		}
		name, val, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			i++
			val = args[i]
		}
		if _, dup := out[name]; dup {
			t.Errorf("flag --%s given twice in %q", name, args)
		}
		out[name] = val
	}
	return out
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestServeFlagsFromSource(t *testing.T) {
	flags := serveFlags(t)
	for _, f := range []string{"dev-root", "driver-root", "v"} {
		if !flags[f] {
			t.Errorf("serve has no --%s (have %v)", f, keys(flags))
		}
	}
}
