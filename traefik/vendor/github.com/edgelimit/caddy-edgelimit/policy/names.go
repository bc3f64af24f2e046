package policy

import "strings"

// Nearest is the name of names closest to word, when it is close enough
// to be what was meant (at most two edits away, case aside): both edges
// suggest it when they refuse an option they do not know.
func Nearest(word string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		d := editDistance(strings.ToLower(word), strings.ToLower(n))
		if d < bestD {
			best = n
			bestD = d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			v := prev[j] + 1
			if cur[j-1]+1 < v {
				v = cur[j-1] + 1
			}
			if prev[j-1]+cost < v {
				v = prev[j-1] + cost
			}
			cur[j] = v
		}
		// Not a tuple assignment: Yaegi swaps slices so only in part.
		tmp := prev
		prev = cur
		cur = tmp
	}
	return prev[len(b)]
}
