"""Copy Debian's WordNet 3.0 (package wordnet-base) into an NLTK data dir.

NLTK's wordnet reader wants ``corpora/wordnet/{data,index}.*`` plus a ``lexnames`` file; Debian
ships the dictionary files under /usr/share/wordnet but not lexnames, which we write here.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession verb.social
verb.stative verb.weather adj.ppl""".split()
# syntactic category number per lexname file (WordNet lexnames(5WN)): 1 noun, 2 verb, 3 adj, 4 adv
_CAT = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def main(dest_root: str) -> int:
    src = Path("/usr/share/wordnet")
    if not (src / "data.noun").exists():
        print(f"[wordnet] {src} has no data.noun (install Debian wordnet-base)", file=sys.stderr)
        return 1
    dest = Path(dest_root) / "corpora" / "wordnet"
    if (dest / "lexnames").exists() and (dest / "data.noun").exists():
        return 0
    tmp = dest.with_name("wordnet.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
    lines = [f"{i:02d}\t{name}\t{_CAT[name.split('.')[0]]}" for i, name in enumerate(LEXNAMES)]
    (tmp / "lexnames").write_text("\n".join(lines) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print(f"[wordnet] installed WordNet into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/nltk_data"))
