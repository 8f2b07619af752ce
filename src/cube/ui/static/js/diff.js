// A line diff (longest common subsequence), enough for two versions of a job:
// [[" ", line], ["-", line], ["+", line], ...] in order.

export function diffLines(before, after) {
  const n = before.length;
  const m = after.length;
  // common[i][j]: the LCS length of before[i:] and after[j:]
  const common = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i -= 1) {
    for (let j = m - 1; j >= 0; j -= 1) {
      common[i][j] =
        before[i] === after[j] ? common[i + 1][j + 1] + 1 : Math.max(common[i + 1][j], common[i][j + 1]);
    }
  }
  const lines = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (before[i] === after[j]) {
      lines.push([" ", before[i]]);
      i += 1;
      j += 1;
    } else if (common[i + 1][j] >= common[i][j + 1]) {
      lines.push(["-", before[i]]);
      i += 1;
    } else {
      lines.push(["+", after[j]]);
      j += 1;
    }
  }
  for (; i < n; i += 1) lines.push(["-", before[i]]);
  for (; j < m; j += 1) lines.push(["+", after[j]]);
  return lines;
}
