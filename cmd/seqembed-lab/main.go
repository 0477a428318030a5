// Command seqembed-lab holds the tools that are not part of the production binary: the chaos
// soak and the plots of a bench report.
//
//	seqembed-lab soak [flags]   3-node JetStream cluster, `seqembed worker` children killed and
//	                            restarted, node and leader faults; prints a loss ledger
//	seqembed-lab plot DIR       draw the PNG plots of a `seqembed bench --report DIR` directory
//	                            and rewrite its summary.md with them
package main

import (
	"os"

	"github.com/seqembed/seqembed/internal/cli"
)

var program = cli.Program{
	Name: "seqembed-lab",
	Commands: []cli.Command{
		{Name: "soak", Summary: "chaos soak: 3-node cluster, `seqembed worker` SIGKILLs, node and leader faults; prints a loss ledger", Run: runSoakCmd},
		{Name: "plot", Summary: "draw the PNG plots of a `seqembed bench --report DIR` directory into it and rewrite its summary.md", Run: runPlotCmd},
	},
	Footer: "Run 'seqembed-lab COMMAND -h' for a command's flags.",
}

func main() { os.Exit(program.Main(os.Args[1:])) }
