#!/usr/bin/env python3
"""Where time goes under a frame: for `perf script -F comm,tid,ip,sym` output (DWARF call
graphs), print each pattern's share of all samples and the split among its direct callees.

  perf_callees.py PERF_SCRIPT.txt 'citadel_authz::authorizer::check' 'Policy::find' ...
"""
import sys, re, collections
stacks=[]; cur=[]
for line in open(sys.argv[1]):
    line=line.rstrip()
    if not line:
        if cur: stacks.append(cur); cur=[]
        continue
    if line.startswith('\t') or line.startswith(' '):
        parts=line.strip().split(' ',1)
        cur.append(parts[1] if len(parts)>1 else parts[0])
if cur: stacks.append(cur)
total=len(stacks)
def child_dist(pat):
    c=collections.Counter(); n=0
    for s in stacks:  # s[0] leaf
        idx=[i for i,f in enumerate(s) if re.search(pat,f)]
        if not idx: continue
        n+=1
        i=min(idx)  # innermost occurrence
        child = s[i-1] if i>0 else '<self>'
        c[re.sub(r'\(.*', '', child)[:150]]+=1
    print(f"== {pat}: {n}/{total} samples ({100*n/total:.1f}%)")
    for k,v in c.most_common(18): print(f"  {100*v/total:5.2f}%  {k}")
for p in sys.argv[2:]: child_dist(p)
