"""What a user sees of a fork study in the MLflow UI, checked in headless Chromium (issue 5).

Starts `mlflow server` on a loopback port against a store made by the smoke fork study and walks the
README's "Compare arms in the MLflow UI" steps: Model training -> the experiment -> expand the study run
(arms by name) -> expand an arm (its seeds, one level deeper) -> collapse it, tick the arms, Compare ->
`t_grok` and `logit_scale_at_grok` side by side, read off the screen and checked against the store.
Every step leaves a screenshot in the test's temporary folder (path printed; `pytest -s` shows it).

MLflow 3.17 UI facts this relies on (see /work/shared/MLFLOW-NOTES.md): the UI opens in GenAI mode
(the "Model training" toggle switches to the runs table); the runs table is an AG Grid whose rows exist
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

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 60                     # generous: the CI machine is small and shared
FORK_ARMS = ["free", "clamp_same", "clamp_raised", "clamp_lowered"]
OPENED_ARM = "clamp_raised"     # the arm whose seeds the test unfolds
STUDY = "fork_study"

PIN = "div.ag-pinned-left-cols-container div.ag-row"   # one copy of each runs-table row
NAME_CELL = '[col-id="attributes.`Run Name`"]'


# ----------------------------------------------------------------------------------------- the store
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build_store(uri: str) -> str:
    """The smoke fork study's store; returns the experiment name."""
    experiment = f"{STUDY}-smoke"
    cmd = [sys.executable, "-m", "interventions.run", STUDY, "--preset", "smoke", "--tracking-uri", uri]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return experiment


def _build_store_recorder(uri: str, tmp: Path) -> str:
    """Interim stand-in: the smoke study's run layout written with tracking.recorder (synthetic numbers)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tracking.recorder import Recorder
    experiment = f"{STUDY}-smoke"
    levers = {"trunk": ("none", 1.0), "free": ("none", 1.0), "clamp_same": ("n0", 1.0),
              "clamp_raised": ("n0", 1.15), "clamp_lowered": ("n0", 1 / 1.15)}
    rec = Recorder(uri, experiment, background=False)
    study = rec.run("study", STUDY, tags={"study": STUDY}, description="same-state fork (smoke)",
                    params={"design": "fork", "preset": "smoke", "n_arms": len(levers), "n_seeds": 2})
    fig, ax = plt.subplots(figsize=(6, 3))
    for i, arm in enumerate(levers):
        ax.annotate(arm, (1, i), xytext=(0, 2), arrowprops={"arrowstyle": "->"})
    ax.set_xlim(-0.5, 2)
    ax.set_ylim(-0.5, len(levers))
    fig.savefig(tmp / "graph.png")
    plt.close(fig)
    rec.log_artifact(study, str(tmp / "graph.png"))
    for i, (arm, (clamp, rho)) in enumerate(levers.items()):
        prm = {"arm": arm, "p": 11, "model": "mlp", "loss": "ce", "precision": "float32", "rho": rho,
               "tau": 1.0, "clamp": clamp, "gamma": 0.0, "train_fraction": 0.4, "lr": 0.01,
               "weight_decay": 1.0, "t_int": 100, "w_c": "none", "budget": 1500, "eval_every": 25,
               "fork_from": "none" if arm == "trunk" else "trunk", "fork_step": 100,
               "tau_source": "given", "design": "fork"}
        tags = {"study": STUDY, "arm": arm}
        aid = rec.run("arm", arm, parent_id=study, params=prm, tags=tags,
                      description=f"{arm}: clamp {clamp} at {rho:.4g} x N0, tau 1; forks trunk@100")
        t_grok, scale = [], []
        for seed in range(2):
            mid = rec.run("member", f"{arm} seed={seed}", parent_id=aid, params={**prm, "seed": seed},
                          tags={**tags, "seed": seed}, description=f"{arm}; seed {seed}")
            t_grok.append(400.0 + 75 * i + 25 * seed)
            scale.append(14.0 + 0.37 * i + 0.1 * seed)
            steps = range(50, 1501, 50)
            rec.log_curves(mid, {"train/acc": [(s, min(1.0, s / 200)) for s in steps],
                                 "test/acc": [(s, min(1.0, s / t_grok[-1])) for s in steps],
                                 "logit/scale": [(s, scale[-1] + 1 - s / 1500) for s in steps],
                                 "norm/total": [(s, 17.0 - s / 500) for s in steps]})
            rec.log_summary(mid, {"t_mem": 50, "t_grok": t_grok[-1], "delay": t_grok[-1] - 50,
                                  "logit_scale_at_grok": scale[-1], "grokked": 1, "diverged": 0})
            rec.finish(mid)
        rec.log_summary(aid, {"t_mem": 50, "t_grok": sum(t_grok) / 2, "delay": sum(t_grok) / 2 - 50,
                              "logit_scale_at_grok": sum(scale) / 2, "n_seeds": 2, "n_grokked": 2})
        rec.finish(aid)
    rec.finish(study)
    rec.close()
    return experiment


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(uri, experiment, runs by name) of a fresh smoke fork study."""
    from mlflow.tracking import MlflowClient
    folder = tmp_path_factory.mktemp("ui_store")
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    experiment = _build_store_recorder(uri, folder)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"{uri}: experiment {experiment!r} missing after the study ran"
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id], max_results=5000)}
    missing = [n for n in [STUDY, *FORK_ARMS, f"{OPENED_ARM} seed=0"] if n not in runs]
    assert not missing, f"{uri}: runs {missing} missing (have {sorted(runs)[:20]})"
    return uri, experiment, runs


# ----------------------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """Base URL of `mlflow server` on a free loopback port; killed (whole process group) at teardown."""
    uri = store[0]
    port = _free_port()
    log = tmp_path_factory.mktemp("ui_server") / "server.log"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin) if mlflow_bin.exists() else "mlflow", "server", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # No background job runner: it starts seven extra processes the UI pages used here never need.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}) before answering /health:\n"
                            f"{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer {base}/health within {WAIT_S} s:\n"
                            f"{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield base
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
def browser():
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
                 "--disable-background-networking", "--disable-dev-shm-usage"]:
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

    def take(driver, name: str) -> Path:
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        return path
    take.folder = folder
    return take


# ----------------------------------------------------------------------------------------- helpers
def _wait(driver, timeout: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.2)


def _row(run) -> str:
    return f'{PIN}[row-id="{run.info.run_id}"]'


def _close_assistant(driver) -> None:
    """The assistant side panel opens by default and eats a third of the width; close it when shown."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    try:
        _wait(driver, 10).until(EC.element_to_be_clickable(
            (By.CSS_SELECTOR, 'button[data-component-id="mlflow.assistant.chat_panel.close"]'))).click()
    except TimeoutException:
        pass   # not shown in this MLflow version/profile: nothing to close


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
    """The n value cells a user sees on the compare page in the row labelled `key`.

    The metric table is two virtualized grids (labels, values) scrolled together by the mouse wheel; a
    row exists in the DOM only near the viewport. So: wheel-scroll over the values until the label is
    rendered, then take the value cells at the label's height (what a reader lines up by eye).
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    def label():
        for a in driver.find_elements(By.CSS_SELECTOR, 'a[title="Plot chart"]'):
            if a.text.strip() == key:
                return a
        return None

    first = _wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, 'a[title="Plot chart"]'))[0]
    labels_grid = first.find_element(By.XPATH, './ancestor::div[@role="grid"][1]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", labels_grid)
    values_grid = labels_grid.find_element(
        By.XPATH, './following::div[@role="grid"][1]')
    deadline = time.monotonic() + WAIT_S
    while (lab := label()) is None or not _inside(lab, values_grid):
        assert time.monotonic() < deadline, f"compare page: no metric row {key!r} after scrolling"
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(values_grid), 0, 90).perform()
        time.sleep(0.2)
    y = lab.rect["y"] + lab.rect["height"] / 2
    cells = [c for c in values_grid.find_elements(By.XPATH, "./div/div")
             if c.rect["y"] <= y <= c.rect["y"] + c.rect["height"]]
    cells.sort(key=lambda c: c.rect["x"])
    assert len(cells) == n, f"compare page: row {key!r} shows {len(cells)} values, expected {n}"
    return [c.text.strip() for c in cells]


def _inside(el, box) -> bool:
    """el's vertical middle lies within box's visible height."""
    y = el.rect["y"] + el.rect["height"] / 2
    return box.rect["y"] <= y <= box.rect["y"] + box.rect["height"]


def _close(shown: str, stored: float) -> bool:
    """The UI rounds metrics for display (4 significant digits or so)."""
    try:
        value = float(shown.replace(",", ""))
    except ValueError:
        return False
    return abs(value - stored) <= 5e-3 * max(1.0, abs(stored))


# ----------------------------------------------------------------------------------------- the tests
def test_compare_arms_of_a_study_in_the_ui(store, server, browser, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    uri, experiment, runs = store
    d = browser

    # 1. Home page -> "Model training" (MLflow 3 opens in GenAI mode) -> the experiment: the runs table.
    d.get(server + "/")
    _wait(d).until(EC.element_to_be_clickable(
        (By.XPATH, "//*[normalize-space(text())='Model training']"))).click()
    _wait(d).until(EC.element_to_be_clickable((By.LINK_TEXT, experiment))).click()
    _wait(d).until(EC.url_contains("/runs"))
    _close_assistant(d)
    study_link = _name_link(d, runs[STUDY])
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

    # 3. Expand one arm: its members, one per seed, one level deeper.
    _toggle(d, runs[OPENED_ARM])
    members = sorted((r for n, r in runs.items()
                      if r.data.tags.get("role") == "member" and r.data.tags.get("arm") == OPENED_ARM),
                     key=lambda r: r.info.run_name)
    assert members, f"{uri}: no member runs of {OPENED_ARM}"
    for m in members:
        link = _name_link(d, m)
        assert link.text.strip() == m.info.run_name == f"{OPENED_ARM} seed={m.data.tags['seed']}"
        assert link.location["x"] > arm_x, "members not indented under the arm"
    shots(d, "03_members")

    # 4. Collapse it again (ticking an expanded arm would tick its seeds too), tick the arms, Compare.
    _toggle(d, runs[OPENED_ARM])
    for m in members:
        _wait(d).until(EC.invisibility_of_element_located((By.CSS_SELECTOR, _row(m))))
    for arm in FORK_ARMS:
        box = d.find_element(By.CSS_SELECTOR, f"{_row(runs[arm])} input.ag-checkbox-input")
        box.click()
        _wait(d).until(lambda _: box.is_selected())
    shots(d, "04_arms_ticked")
    _wait(d).until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, 'button[data-testid="runs-compare-button"]'))).click()
    _wait(d).until(EC.url_contains("compare-runs"))
    _wait(d).until(EC.presence_of_element_located(
        (By.XPATH, f"//*[contains(normalize-space(.), 'Comparing {len(FORK_ARMS)} Runs')]")))
    selected = json.loads(d.current_url.split("runs=", 1)[1].split("&", 1)[0].replace("%22", '"'))
    assert sorted(selected) == sorted(runs[a].info.run_id for a in FORK_ARMS)
    _close_assistant(d)
    shots(d, "05_compare")

    # 5. The compare page: the run names head the columns, t_grok and logit_scale_at_grok line up under them.
    name_row = _wait(d).until(EC.presence_of_element_located(
        (By.XPATH, "//*[normalize-space(text())='Run Name:']/ancestor::tr[1]")))
    columns = [td.text.strip() for td in name_row.find_elements(By.XPATH, "./td")]
    assert sorted(columns) == sorted(FORK_ARMS), f"compare page columns: {columns}"
    for key in ["t_grok", "logit_scale_at_grok"]:
        shown = _metric_row_values(d, key, len(columns))
        shots(d, f"06_compare_{key}")
        for arm, value in zip(columns, shown):
            stored = runs[arm].data.metrics.get(key)
            assert stored is not None, f"{uri}: arm {arm} has no {key} (did it grok?)"
            assert _close(value, stored), f"compare page shows {key}={value!r} for {arm}, store has {stored}"


def test_study_graph_opens_as_an_image(store, server, browser, shots):
    """The study run's graph.png shows as a picture in its Artifacts tab."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    uri, experiment, runs = store
    study = runs[STUDY]
    d = browser
    d.get(f"{server}/#/experiments/{study.info.experiment_id}/runs/{study.info.run_id}/artifacts")
    _close_assistant(d)
    _wait(d).until(EC.element_to_be_clickable((By.XPATH, "//*[normalize-space(text())='graph.png']"))).click()
    img = _wait(d).until(EC.visibility_of_element_located((By.CSS_SELECTOR, 'img[src*="graph.png"]')))
    _wait(d).until(lambda _: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img))
    assert img.size["width"] > 200 and img.size["height"] > 100, f"graph.png shown at {img.size}"
    shots(d, "07_study_graph")
