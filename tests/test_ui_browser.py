"""What a user sees of a fork study in the MLflow UI, checked in headless Chromium (issue 5).

Starts `mlflow server` on a loopback port against the store of the shared smoke fork study
(conftest.fork_smoke) and walks the
docs' "MLflow UI" steps: the runs-table link the study printed, opened in a fresh browser profile -> expand the study run
(arms by name) -> Columns (descriptions, t_grok, logit_scale_at_grok) -> expand an arm (its seeds, one
level deeper) -> collapse it, tick the arms, Compare -> the same params on every arm and `t_grok`,
`logit_scale_at_grok` side by side. Then an arm's curves grouped by prefix, the graph picture, and the
report run's report.html with every figure drawn inside the artifact view.
Everything asserted is read off the screen and checked against the store. Every step leaves a
screenshot in the test's temporary folder (path printed; `pytest -s` shows it).

MLflow 3.17 UI facts this relies on (see /work/shared/MLFLOW-NOTES.md): the UI opens in GenAI mode unless
the URL says `workflowType=machine_learning` (the experiment-kind tag does not change that); the runs table is an AG Grid whose rows exist
once per column container; ticking an expanded parent also ticks its children, so arms are ticked
collapsed; the compare page's metric table is virtualized (rows render only when scrolled into view).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tracking.store import UI_DEFAULT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 60                     # generous: the CI machine is small and shared
FORK_ARMS = ["free", "clamp_same", "clamp_raised", "clamp_lowered"]
OPENED_ARM = "clamp_raised"     # the arm whose seeds the test unfolds
STUDY = "fork_study"
EXPERIMENT = f"{STUDY}-smoke"    # the CLI's experiment for a preset other than "default"

PIN = "div.ag-pinned-left-cols-container div.ag-row"   # one copy of each runs-table row
NAME_CELL = '[col-id="attributes.`Run Name`"]'
COLUMN_ENTRY = "du-bois-light-tree-node-content-wrapper"     # class of an entry in the Columns menu
SUMMARY_COLUMNS = ["t_grok", "logit_scale_at_grok"]


# ----------------------------------------------------------------------------------------- the study, served
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(uri: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port, in its own process group (so teardown kills it all)."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # No background job runner: it starts seven extra processes the UI pages used here never need.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc: subprocess.Popen, base: str, log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}) before answering /health:\n"
                        f"{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not answer {base}/health within {WAIT_S} s:\n"
                        f"{log.read_text()[-3000:]}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def ui_study_said(fork_smoke):
    return fork_smoke.said


@pytest.fixture(scope="module")
def ui_study(fork_smoke, tmp_path_factory):
    """(base URL, uri, experiment, runs by name): the shared smoke fork study (conftest.fork_smoke: trained,
    reported) served by `mlflow server`. The server's whole process group is killed at teardown, whatever
    happened."""
    from mlflow.tracking import MlflowClient
    uri = fork_smoke.uri
    assert fork_smoke.experiment == EXPERIMENT
    log = tmp_path_factory.mktemp("ui_study") / "server.log"
    proc, base = _start_server(uri, log)
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=5000)}
        missing = [n for n in [STUDY, *FORK_ARMS, f"{OPENED_ARM} seed=0", "report"] if n not in runs]
        assert not missing, f"{uri}: runs {missing} missing from {EXPERIMENT} (have {sorted(runs)[:20]})"
        grokked = [a for a in FORK_ARMS if runs[a].data.metrics.get("t_grok") is not None]
        assert len(grokked) >= 2, (f"{uri}: only {grokked} of {FORK_ARMS} grokked in the smoke study: "
                                   f"nothing to compare (smoke preset of {STUDY}.yaml needs recalibrating)")
        _wait_healthy(proc, base, log)
        yield base, uri, EXPERIMENT, runs
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


# ----------------------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium via selenium; a browser that cannot start FAILS the test (never skips)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f"selenium is not installed ({e}); pip install -e '.[test]'")
    for path, pkg in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")]:
        if not (Path(path).exists() or shutil.which(path)):
            pytest.fail(f"{path} not found: the browser test needs Debian's {pkg} "
                        f"(apt-get install -y chromium chromium-driver), or set CHROMIUM/CHROMEDRIVER")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:   # a fresh profile
        opts.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    except Exception as e:   # selenium wraps every start failure differently; the message is what matters
        pytest.fail(f"headless Chromium could not start (binary {CHROMIUM}, driver {CHROMEDRIVER}): "
                    f"{type(e).__name__}: {str(e).strip()[:2000]}")
    try:
        # --window-size alone gives a shorter viewport in headless mode; set the metrics directly.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        driver.set_page_load_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Screenshot writer: shots("01_runs") -> <tmp>/ui_screens/01_runs.png."""
    folder = tmp_path_factory.mktemp("ui_screens")
    print(f"\nUI screenshots: {folder}")
    t0 = time.monotonic()

    def take(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        print(f"  {time.monotonic() - t0:6.1f} s  {path.name}")
        return path
    return take


# ----------------------------------------------------------------------------------------- helpers
def _wait(driver, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.2)


def _row(run) -> str:
    return f'{PIN}[row-id="{run.info.run_id}"]'


def _close_assistant(driver) -> None:
    """The assistant side panel opens by default and takes a third of the width; close it if shown."""
    from selenium.webdriver.common.by import By
    for button in driver.find_elements(
            By.CSS_SELECTOR, 'button[data-component-id="mlflow.assistant.chat_panel.close"]'):
        if button.is_displayed():
            button.click()


def _toggle(driver, run) -> None:
    """Click the +/- button in a run's name cell (expands or collapses its child runs)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    _wait(driver).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, f"{_row(run)} {NAME_CELL} button"))).click()


def _name_link(driver, run):
    """The run-name link in a run's row of the runs table (the text a user reads)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    return _wait(driver).until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, f"{_row(run)} {NAME_CELL} a")))


def _metric_row_values(driver, key: str, n: int) -> list[str]:
    """The n values a user reads on the compare page in the metric row labelled `key`.

    The metric table is two virtualized grids side by side (names | values), at most ~6 rows tall; rows
    exist in the DOM only near the viewport, and only the values grid scrolls (the wheel). MLflow 3.17
    copies the values' scroll position to the names one scroll event late, so after a single big jump
    the names sit rows off their values. So: wheel down a few rows at a time until the row shows,
    nudge until both grids agree, then take the value cells level with the name.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    def label():
        for a in driver.find_elements(By.CSS_SELECTOR, 'a[title="Plot chart"]'):
            if a.text.strip() == key:
                return a
        return None

    def wheel(dx: int, dy: int) -> None:
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(values_grid), dx, dy).perform()

    def tops() -> tuple[int, int]:
        return driver.execute_script("return [arguments[0].scrollTop, arguments[1].scrollTop]",
                                     names_grid, values_grid)

    first = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, 'a[title="Plot chart"]'))[0]
    names_grid = first.find_element(By.XPATH, './ancestor::div[@role="grid"][1]')
    values_grid = names_grid.find_element(By.XPATH, './following::div[@role="grid"][1]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", values_grid)
    if driver.execute_script("return arguments[0].scrollLeft", values_grid):
        wheel(-5000, 0)    # first value column fully in view
    if tops()[1]:
        wheel(0, -100000)  # from the top: rows are sorted by name
        _wait(driver, 5).until(lambda _: tops()[1] == 0)
    while (lab := label()) is None or not _inside(lab, values_grid):
        before = tops()[1]
        wheel(0, 135)      # three rows; the window shows six, so the row cannot be skipped
        _wait(driver, 5).until(lambda _: tops()[1] != before, f"compare page: no metric row {key!r} "
                               f"(scrolled to the bottom of the metric table)")
    for step in [-1, 1, -1, 1]:           # late sync: each nudge brings the names to the values
        names_top, values_top = tops()
        if abs(names_top - values_top) <= 2:
            break
        wheel(0, step)
        time.sleep(0.3)
    names_top, values_top = tops()
    assert abs(names_top - values_top) <= 2, \
        f"compare page: metric names scrolled to {names_top}px but values to {values_top}px"
    lab = label()
    y = lab.rect["y"] + lab.rect["height"] / 2
    cells = [c for c in values_grid.find_elements(By.XPATH, "./div/div")
             if c.rect["y"] <= y <= c.rect["y"] + c.rect["height"]]
    cells.sort(key=lambda c: c.rect["x"])
    assert len(cells) == n, f"compare page: row {key!r} shows {len(cells)} values, expected {n}"
    return [c.text.strip() for c in cells]


def _cut(link) -> bool:
    """True when the browser shows this run name cut short with an ellipsis."""
    return link.parent.execute_script(
        "const t = arguments[0].firstElementChild || arguments[0]; return t.scrollWidth > t.clientWidth;",
        link)


def _inside(el, box) -> bool:
    """el's vertical middle lies within box's visible height."""
    y = el.rect["y"] + el.rect["height"] / 2
    return box.rect["y"] <= y <= box.rect["y"] + box.rect["height"]


def _close(shown: str, stored: float | None) -> bool:
    """The UI rounds metrics for display (4 significant digits on the compare page); absent shows blank."""
    if stored is None:                    # e.g. t_grok of an arm whose seeds did not grok
        return shown in ("", "-", "NaN")    # the compare page writes NaN for a metric a run lacks
    try:
        value = float(shown.replace(",", ""))
    except ValueError:
        return False
    return abs(value - stored) <= 5e-3 * max(1.0, abs(stored))


# ----------------------------------------------------------------------------------------- the tests
def test_compare_arms_of_a_study_in_the_ui(browser, ui_study, ui_study_said, shots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    server, uri, experiment, runs = ui_study
    d = browser

    # 1. A fresh browser profile opens the link the study printed: the first page is the runs table (MLflow
    #    3.17 would open the experiment itself on the GenAI traces overview; the link says which view).
    (line,) = [x for x in ui_study_said if x.startswith("runs table in the MLflow UI: ")]
    link = line.split(", then ")[-1].replace(UI_DEFAULT, server + "/")
    d.get(link)
    study_link = _name_link(d, runs[STUDY])
    assert "/runs" in d.current_url and "overview" not in d.current_url, d.current_url
    _close_assistant(d)
    assert study_link.text.strip() == STUDY
    shots(d, "01_runs_table")

    # 2. Expand the study run: one row per arm, named as in the study file.
    _toggle(d, runs[STUDY])
    arm_links = {a: _name_link(d, runs[a]) for a in FORK_ARMS}
    shots(d, "02_arms")
    arm_x = arm_links[OPENED_ARM].location["x"]
    for arm, link in arm_links.items():
        assert link.text.strip() == arm, f"runs table shows {link.text!r} for arm {arm!r}"
        assert link.location["x"] == arm_x, "arms of one study not at one indentation"
    assert arm_x > study_link.location["x"], "arms not indented under the study"

    # 3. Columns: MLflow 3 hides metric columns until picked ("Show more columns (N total)"). Drop the
    #    empty Source/Models columns, add each arm's one-line description and the seed-median
    #    summaries t_grok and logit_scale_at_grok; the Dataset column shows each arm's task.
    _wait(d).until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Columns']"))).click()
    search = _wait(d).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, 'input[placeholder="Search columns"]')))
    for title in ["Source", "Models", "Description", *SUMMARY_COLUMNS]:
        search.send_keys(Keys.CONTROL, "a")      # the menu lists ~60 columns: search rather than scroll
        search.send_keys(title)
        _wait(d).until(EC.element_to_be_clickable(
            (By.XPATH, f"//span[contains(@class, '{COLUMN_ENTRY}')][normalize-space(.)='{title}']"))).click()
    shots(d, "03_columns_menu")
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    _wait(d).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, f"span.{COLUMN_ENTRY}")))
    for arm in FORK_ARMS:
        row = f'div.ag-center-cols-container div.ag-row[row-id="{runs[arm].info.run_id}"]'
        note = runs[arm].data.tags.get("mlflow.note.content", "")
        assert note, f"{uri}: arm {arm} has no description (tag mlflow.note.content)"
        cell = _wait(d).until(EC.visibility_of_element_located(
            (By.CSS_SELECTOR, f'{row} [col-id="attributes.`Description`"]')))
        shown = cell.text.strip()     # MLflow cuts descriptions to 50 characters + "..." in the table
        cut = shown.endswith("...") and note.startswith(shown[:-3]) and len(shown) > 40
        assert shown == note or cut, f"runs table shows description {shown!r} for {arm}, store has {note!r}"
        prm = runs[arm].data.params
        task = f"{prm['op']}_mod{prm['p']}_tf{float(prm['train_fraction']):.2f}"   # e.g. add_mod23_tf0.70
        assert task in d.find_element(By.CSS_SELECTOR, row).text, f"no dataset {task!r} in the row of {arm}"
        for key in SUMMARY_COLUMNS:
            cell = _wait(d).until(EC.visibility_of_element_located(
                (By.CSS_SELECTOR, f'{row} [col-id="metrics.`{key}`"]')))
            stored = runs[arm].data.metrics.get(key)
            assert _close(cell.text.strip(), stored), \
                f"runs table shows {key}={cell.text!r} for {arm}, store has {stored}"
    shots(d, "04_summary_columns")

    # 4. Expand one arm: its members, one per seed, one level deeper; widen the name column (it cuts
    #    "clamp_raised seed=0" to "clamp_rais...") by dragging the header edge, as a user would.
    _toggle(d, runs[OPENED_ARM])
    members = sorted((r for n, r in runs.items()
                      if r.data.tags.get("role") == "member" and r.data.tags.get("arm") == OPENED_ARM),
                     key=lambda r: r.info.run_name)
    assert members, f"{uri}: no member runs of {OPENED_ARM}"
    links = [_name_link(d, m) for m in members]
    if any(_cut(link) for link in links):
        edge = d.find_element(By.CSS_SELECTOR, f'.ag-header-cell{NAME_CELL} .ag-header-cell-resize')
        ActionChains(d).drag_and_drop_by_offset(edge, 160, 0).perform()
    for m, link in zip(members, links):
        assert link.text.strip() == m.info.run_name == f"{OPENED_ARM} seed={m.data.tags['seed']}"
        assert link.location["x"] > arm_x, "members not indented under the arm"
        assert not _cut(link), f"runs table cuts {m.info.run_name!r} even after widening the name column"
    shots(d, "05_members")

    # 5. Collapse it again (ticking an expanded arm would tick its seeds too), tick the arms, Compare.
    _toggle(d, runs[OPENED_ARM])
    for m in members:
        _wait(d).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, _row(m))))
    for arm in FORK_ARMS:
        box = d.find_element(By.CSS_SELECTOR, f"{_row(runs[arm])} input.ag-checkbox-input")
        box.click()
        _wait(d).until(lambda _: box.is_selected())
    shots(d, "06_arms_ticked")
    _wait(d).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, 'button[data-testid="runs-compare-button"]'))).click()
    _wait(d).until(EC.url_contains("compare-runs"))
    _wait(d).until(EC.presence_of_element_located(
        (By.XPATH, f"//*[contains(normalize-space(.), 'Comparing {len(FORK_ARMS)} Runs')]")))
    selected = json.loads(d.current_url.split("runs=", 1)[1].split("&", 1)[0].replace("%22", '"'))
    assert sorted(selected) == sorted(runs[a].info.run_id for a in FORK_ARMS)
    _close_assistant(d)
    shots(d, "07_compare")

    # 6. The compare page: the run names head the columns; every parameter has a value on every arm
    #    (identical keys line up); t_grok and logit_scale_at_grok line up under the names.
    name_row = _wait(d).until(EC.presence_of_element_located(
        (By.XPATH, "//*[normalize-space(text())='Run Name:']/ancestor::tr[1]")))
    columns = [td.text.strip() for td in name_row.find_elements(By.XPATH, "./td")]
    assert sorted(columns) == sorted(FORK_ARMS), f"compare page columns: {columns}"
    params = _wait(d).until(EC.presence_of_element_located(
        (By.XPATH, "//th[normalize-space(.)='rho']/ancestor::table[1]")))
    rows = d.execute_script("return [...arguments[0].querySelectorAll('tr')]"
                            ".map(tr => [...tr.children].map(c => c.textContent.trim()))", params)
    shown_params = {r[0]: r[1:] for r in rows}
    assert shown_params["arm"] == columns, f"compare page: param arm reads {shown_params['arm']}"
    assert set(shown_params) == set(runs[FORK_ARMS[0]].data.params), \
        f"compare page shows params {sorted(shown_params)}"
    blank = [k for k, v in shown_params.items() if len(v) != len(columns) or "" in v]
    assert not blank, f"compare page: params {blank} missing on some arm (param keys differ between arms)"
    for key in ["t_grok", "logit_scale_at_grok"]:
        shown = _metric_row_values(d, key, len(columns))
        shots(d, f"08_compare_{key}")
        for arm, value in zip(columns, shown):
            stored = runs[arm].data.metrics.get(key)
            assert _close(value, stored), f"compare page shows {key}={value!r} for {arm}, store has {stored}"


def test_run_pages_group_curves_and_show_the_graph(browser, ui_study, shots):
    """An arm's curves show in one chart section per key prefix; the study's graph.png opens as a picture."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    server, uri, experiment, runs = ui_study
    study, arm = runs[STUDY], runs[OPENED_ARM]
    d = browser

    d.get(f"{server}/#/experiments/{arm.info.experiment_id}/runs/{arm.info.run_id}/model-metrics")
    _wait(d).until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space(text())='train']")))
    _close_assistant(d)
    # section headers read "<prefix>" then "(<number of charts>)"; unprefixed summaries go to "Model metrics"
    sections = dict(d.execute_script(
        "return [...document.querySelectorAll('div')].filter(el => el.children.length == 0"
        " && /^\\(\\d+\\)$/.test(el.textContent.trim()) && el.previousElementSibling)"
        ".map(el => [el.previousElementSibling.textContent.trim(), +el.textContent.trim().slice(1, -1)])"))
    prefixes = {}
    for key in arm.data.metrics:
        if "/" in key:
            prefixes[key.split("/")[0]] = prefixes.get(key.split("/")[0], 0) + 1
    assert {"train", "test", "norm", "logit", "softmax"} <= set(prefixes), f"{uri}: curve keys {prefixes}"
    assert {k: sections.get(k) for k in prefixes} == prefixes, \
        f"chart sections {sections}, curve keys {prefixes}"
    _wait(d).until(lambda _: d.find_elements(By.CSS_SELECTOR, "svg.main-svg path.js-line"))   # curves drawn
    shots(d, "09_arm_curves")

    d.get(f"{server}/#/experiments/{study.info.experiment_id}/runs/{study.info.run_id}/artifacts")
    _wait(d).until(EC.element_to_be_clickable((By.XPATH, "//*[normalize-space(text())='graph.png']"))).click()
    img = _wait(d).until(EC.visibility_of_element_located((By.CSS_SELECTOR, 'img[alt="graph.png"]')))
    _wait(d).until(lambda _: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                              img))
    _close_assistant(d)
    assert img.size["width"] > 200 and img.size["height"] > 100, f"graph.png shown at {img.size}"
    shots(d, "10_study_graph")


def test_the_report_opens_with_its_figures_in_the_artifact_view(browser, ui_study, shots):
    """The report run's report.html shows in the artifact view with every figure of report.md drawn."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    server, uri, experiment, runs = ui_study
    report = runs["report"]
    from mlflow.tracking import MlflowClient
    pngs = [f.path for f in MlflowClient(uri).list_artifacts(report.info.run_id) if f.path.endswith(".png")]
    md = Path(MlflowClient(uri).download_artifacts(report.info.run_id, "report.md")).read_text()
    linked = [ln for ln in md.splitlines() if ln.startswith("![")]
    assert linked and len(linked) <= len(pngs), f"report.md links {len(linked)} figures, run holds {pngs}"
    d = browser
    d.get(f"{server}/#/experiments/{report.info.experiment_id}/runs/{report.info.run_id}/artifacts")
    _wait(d).until(EC.element_to_be_clickable((By.XPATH, "//*[normalize-space(text())='report.html']"))).click()
    frame = _wait(d).until(EC.presence_of_element_located((By.CSS_SELECTOR, "iframe")))
    _close_assistant(d)
    d.switch_to.frame(frame)
    try:
        _wait(d).until(lambda _: len(d.find_elements(By.TAG_NAME, "img")) == len(linked))
        imgs = d.find_elements(By.TAG_NAME, "img")
        drawn = [d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in imgs]
        assert all(w and w > 200 for w in drawn), f"report.html: figures drawn at widths {drawn}"
        assert d.find_elements(By.TAG_NAME, "table"), "report.html shows no table"
        heading = d.find_element(By.TAG_NAME, "h1").text
        d.execute_script("arguments[0].scrollIntoView()", imgs[0])
    finally:
        d.switch_to.default_content()
    assert experiment in heading, heading
    shots(d, "11_report_html")


def test_group_the_runs_by_arm_and_read_the_ui_aggregate_beside_the_arm_median(browser, ui_study, shots):
    """README step 7: Group by -> arm (a tag). Each group holds an arm's seeds and the arm run itself; the
    group row shows the UI's own aggregate ("(average)" by default) over those runs, the arm run the
    study's seed median over the grokked seeds."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    server, uri, experiment, runs = ui_study
    d = browser
    d.get(f"{server}/#/experiments/{runs[STUDY].info.experiment_id}/runs")
    _wait(d).until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Group by']"))).click()
    arm_tag = _wait(d).until(lambda _: [i for i in d.find_elements(By.CSS_SELECTOR, "[role=menuitemcheckbox]")
                                        if i.text.strip() == "arm"])[0]   # the first `arm`: under Tags
    arm_tag.click()
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    _wait(d).until(EC.presence_of_element_located((By.XPATH, "//button[normalize-space(.)='Group by: arm']")))
    _close_assistant(d)
    # t_grok as a column (the step-3 choice may not survive a reload)
    if not d.find_elements(By.CSS_SELECTOR, '[col-id="metrics.`t_grok`"]'):
        _wait(d).until(EC.element_to_be_clickable((By.XPATH, "//button[normalize-space(.)='Columns']"))).click()
        search = _wait(d).until(EC.element_to_be_clickable((By.CSS_SELECTOR, 'input[placeholder="Search columns"]')))
        search.send_keys("t_grok")
        _wait(d).until(EC.element_to_be_clickable(
            (By.XPATH, f"//span[contains(@class, '{COLUMN_ENTRY}')][normalize-space(.)='t_grok']"))).click()
        d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    for arm in FORK_ARMS:
        row = f'div.ag-center-cols-container div.ag-row[row-id="tag.arm.{arm}"]'
        shown = _wait(d).until(EC.presence_of_element_located(
            (By.CSS_SELECTOR, f'{row} [col-id="metrics.`t_grok`"]'))).text.strip()
        group = [r for r in runs.values() if r.data.tags.get("arm") == arm]     # its seeds and the arm run
        assert sorted(r.data.tags["role"] for r in group).count("arm") == 1 and len(group) >= 2
        values = [r.data.metrics["t_grok"] for r in group if "t_grok" in r.data.metrics]
        assert shown.endswith("(average)"), f"group {arm}: t_grok shows {shown!r}"
        assert _close(shown.split()[0], sum(values) / len(values)), \
            f"group {arm}: t_grok {shown!r}, the mean of its runs' values {values} is {sum(values) / len(values)}"
    shots(d, "12_grouped_by_arm")
