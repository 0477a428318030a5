//go:build noplot

package main

// Built with -tags noplot (the small binary carried to the GPU machine): no PNG plots; summary.md
// says so for each.
var reportPlots = []reportPlot{
	{reportThroughput, noPlot}, {reportPadding, noPlot}, {reportGPU, noPlot}, {reportRows, noPlot},
}

func noPlot(string, benchResult, *benchSeries) (bool, string, error) {
	return false, "Plots are not built into this binary (built with -tags noplot).", nil
}
