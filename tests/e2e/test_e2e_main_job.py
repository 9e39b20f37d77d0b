"""The main job, embedded: deploy the digits model from the catalog, wait for
CREATE_COMPLETE, send a real PNG of a digit to the deployed model through the gateway (a
direct call to the model's port is refused), train it, delete it, and check that nothing of
the deployment is left running or listening."""

from __future__ import annotations

from hdc_gateway.devtoken import mint

from tests.e2e.flow import (
    digit_png,
    listening,
    model_url,
    post_digit,
    predicts,
    processes_of,
    wait_for,
)


def test_deploy_predict_train_delete_digits(platform, tmp_path):
    seven = digit_png(tmp_path / "seven.png", 7)
    three = digit_png(tmp_path / "three.png", 3)

    dep = platform.hdc_json("model", "deploy", "digits", "--wait", "--wait-timeout", "120")
    uuid = dep["uuid"]
    deleted = False
    try:
        assert dep["status"] == "CREATE_COMPLETE", dep
        assert dep["cloudProviderName"] == "local"
        endpoint = dep["outputs"]["endpoint"]
        assert dep["outputs"]["model"] == "digits"
        assert processes_of(dep["physicalId"]), "no model process runs for the deployment"

        # the deployment's views answer and parse
        assert platform.hdc_json("deployment", "show", uuid)["status"] == "CREATE_COMPLETE"
        resources = platform.hdc_json("resource", "list", uuid)["content"]
        assert {r["toscaNodeName"] for r in resources} >= {"model_service"}
        events = platform.hdc_json("deployment", "events", uuid)
        assert "CREATE_COMPLETE" in str(events)
        assert platform.hdc_json("deployment", "placement", uuid)
        assert "hdc.nodes.ModelService" in platform.hdc("deployment", "template", uuid).stdout
        for human in (
            ["deployment", "list"],
            ["deployment", "show", uuid],
            ["deployment", "events", uuid],
            ["deployment", "placement", uuid],
            ["deployment", "log", uuid],
            ["resource", "list", uuid],
        ):
            out = platform.hdc(*human)
            assert out.returncode == 0 and out.stdout.strip(), (human, out.stderr)
        assert "model_service" in platform.hdc("resource", "list", uuid).stdout

        # a real image of a digit, as curl would send it, through the gateway with the
        # token `hdc token` prints
        token = platform.hdc("token").stdout.strip()
        bearer = {"Authorization": f"Bearer {token}"}
        r = post_digit(model_url(uuid), seven, bearer)
        assert r.status_code == 200, r.text
        assert r.json()["predictions"]["label"] == 7
        # the model's own port refuses whoever skips the gateway
        direct = post_digit(endpoint, seven)
        assert direct.status_code == 401, direct.text
        # without a token, and for a user who may not see the deployment, the gateway refuses
        assert post_digit(model_url(uuid), seven).status_code == 401
        other = mint(platform.home / "data", "someone-else", [])
        stranger = post_digit(model_url(uuid), seven, {"Authorization": f"Bearer {other}"})
        assert stranger.status_code == 404, stranger.text

        # and through the CLI
        pred = platform.hdc_json("model", "predict", uuid, "--file", f"image={three}")
        assert pred["predictions"]["label"] == 3
        bad = platform.hdc("model", "predict", uuid, "--arg", "pixels=not-numbers")
        assert bad.returncode == 2, bad.stderr

        # stop and start the model's resource: the process goes and comes back
        model_rs = next(r for r in resources if r["toscaNodeName"] == "model_service")
        assert platform.hdc("resource", "stop", uuid, model_rs["uuid"]).returncode == 0
        wait_for(lambda: not listening(endpoint), "the model to stop")
        assert platform.hdc("resource", "start", uuid, model_rs["uuid"]).returncode == 0
        wait_for(
            lambda: predicts(model_url(uuid), seven, token) == 7, "the restarted model to predict"
        )

        job = platform.hdc_json("model", "train", uuid, "--arg", "C=0.5", "--wait")
        assert job["status"] == "done" and job["result"]["output"]["accuracy"] > 0.9

        gone = platform.hdc_json("deployment", "delete", uuid, "--wait", "--wait-timeout", "60")
        deleted = True
        assert gone["status"] == "DELETE_COMPLETE"
        assert platform.hdc("deployment", "show", uuid).returncode == 4
        assert not listening(endpoint), f"{endpoint} still listens after the delete"
        assert processes_of(dep["physicalId"]) == []
        assert post_digit(model_url(uuid), seven, bearer).status_code == 404
        unreachable = platform.hdc("model", "predict", uuid, "--file", f"image={seven}")
        assert unreachable.returncode == 4
    finally:
        if not deleted:
            platform.hdc("deployment", "delete", uuid, "--force")
