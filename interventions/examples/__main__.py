"""python -m interventions.examples [FOLDER]: copy the example study files and plug-ins into FOLDER."""
import sys

from interventions.examples import FILES, copy_to

folder = sys.argv[1] if len(sys.argv) > 1 else "examples"
copied = copy_to(folder)
kept = len(FILES) - len(copied)
print(f"{len(copied)} example file(s) copied into {folder}/" + (f"; {kept} already there, left as they were" if kept else ""))
print(f"try: python -m interventions.run {folder}/annotated_study.yaml --preset smoke")
