"""The site runtime's public names are pinned: changing them is a visible decision."""

from __future__ import annotations

import flare_site.archive
import flare_site.blobs
import flare_site.commands
import flare_site.jobs
import flare_site.runtime


def test_the_public_names_of_the_site_runtime_modules() -> None:
    assert sorted(flare_site.runtime.__all__) == [
        "SERVER_TOPICS",
        "SiteRuntime",
        "SiteSettings",
        "load_site_settings",
    ]
    assert sorted(flare_site.jobs.__all__) == ["JobLog", "JobManager", "JobRecord", "check_job_id"]
    assert sorted(flare_site.blobs.__all__) == [
        "Blob",
        "BlobError",
        "download",
        "sha256_file",
        "upload",
    ]
    assert sorted(flare_site.commands.__all__) == ["CommandResult", "SiteCommands"]
    assert sorted(flare_site.archive.__all__) == ["AppLimits", "extract_app"]


def test_the_server_may_send_only_the_documented_topics() -> None:
    assert {topic.value for topic in flare_site.runtime.SERVER_TOPICS} == {
        "job.deploy",
        "task.train",
        "task.validate",
        "job.abort",
        "job.end",
        "site.command",
        "driver.message",
    }
