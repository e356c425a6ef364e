// The web dashboard and /api/v1 against a real dsv3d with two users: the API answers with the
// gRPC service's own ownership rules, and headless Chromium logs in, lists jobs, draws a
// finished job's curves and a running job's live ones, cancels it with the page's button, and
// is refused another user's job (tests/server/dashboard_browser.py drives the browser).
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "controller_fixture.h"

namespace dsv3::test {
namespace {

using nlohmann::json;

int64_t SubmitAs(v1::Controller::Stub& stub, const std::string& token, const json& config, int priority = 0) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + token);
  v1::SubmitJobRequest req;
  req.set_config_json(config.dump());
  req.set_priority(priority);
  v1::SubmitJobResponse resp;
  const grpc::Status s = stub.SubmitJob(&ctx, req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp.job().id();
}

std::string Bearer(const std::string& token) { return "Authorization: Bearer " + token + "\r\n"; }

// The status code and the JSON body of an API answer.
std::pair<int, json> Api(const std::string& host_port, const std::string& method, const std::string& path,
                         const std::string& headers = "", const std::string& body = "") {
  const std::string response = HttpExchange(host_port, method + " " + path + " HTTP/1.1\r\nHost: " + host_port +
                                                           "\r\n" + headers + "Content-Length: " +
                                                           std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
                                                           body);
  const auto at = response.find("\r\n\r\n");
  if (response.size() < 12 || at == std::string::npos) return {0, json()};
  return {std::stoi(response.substr(9, 3)), json::parse(response.substr(at + 4), nullptr, false)};
}

std::vector<std::string> Ids(const json& list) {
  std::vector<std::string> out;
  for (const auto& j : list.value("jobs", json::array())) out.push_back(j["id"]);
  return out;
}

TEST(DashboardTest, ApiHonoursOwnershipAndChromiumDrivesThePages) {
  Corpus();
  TempDir dir;
  Dsv3d d(dir.path() / "state", 2, 20, {"--read-root", Corpus().string()});
  d.Start();
  ASSERT_EQ(d.Admin({"user", "add", "alice"}), 0);
  ASSERT_EQ(d.Admin({"user", "add", "bob"}), 0);
  const std::string alice = d.Issue({"token", "create", "alice"});
  const std::string bob = d.Issue({"token", "create", "bob"});
  auto stub = d.Stub();

  json quick = QuickConfig(20, 10);
  quick["data"]["cache_dir"] = "cache";  // in the user's folder
  quick["training"]["log_interval"] = 1;
  const int64_t done = SubmitAs(*stub, alice, quick);
  // Bob's job waits behind alice's (lower priority, two slots).
  const int64_t foreign = SubmitAs(*stub, bob, quick, -5);
  json endless = quick;
  endless["training"]["train_steps"] = 100000;
  endless["training"]["save_interval"] = 100000;
  endless["training"]["eval_interval"] = 100000;
  const int64_t running = SubmitAs(*stub, alice, endless);
  ASSERT_TRUE(WaitFor(
      [&] {
        const auto [code, job] = Api(d.http(), "GET", "/api/v1/jobs/" + std::to_string(done), Bearer(alice));
        return code == 200 && job.value("state", "") == "JOB_STATE_COMPLETED";
      },
      std::chrono::seconds(120)));

  // The API: each user sees their own jobs; a foreign job is refused as over gRPC.
  auto [code, list] = Api(d.http(), "GET", "/api/v1/jobs", Bearer(bob));
  EXPECT_EQ(code, 200);
  EXPECT_EQ(Ids(list), std::vector<std::string>{std::to_string(foreign)}) << list;
  std::tie(code, list) = Api(d.http(), "GET", "/api/v1/jobs?state=COMPLETED", Bearer(alice));
  EXPECT_EQ(Ids(list), std::vector<std::string>{std::to_string(done)}) << list;
  std::tie(code, list) = Api(d.http(), "GET", "/api/v1/jobs/" + std::to_string(done), Bearer(bob));
  EXPECT_EQ(code, 403);
  EXPECT_EQ(list["code"], "PERMISSION_DENIED") << list;
  std::tie(code, list) = Api(d.http(), "GET", "/api/v1/jobs");
  EXPECT_EQ(code, 401) << list;
  std::tie(code, list) = Api(d.http(), "GET", "/api/v1/jobs", Bearer("dsv3u_0123"));
  EXPECT_EQ(code, 401) << list;
  std::tie(code, list) = Api(d.http(), "GET", "/api/v1/jobs?state=SLEEPING", Bearer(alice));
  EXPECT_EQ(code, 400);
  EXPECT_NE(list["error"].get<std::string>().find("'state': 'JOB_STATE_SLEEPING' is not a job state"),
            std::string::npos)
      << list;
  std::tie(code, list) =
      Api(d.http(), "GET", "/api/v1/jobs/" + std::to_string(done) + "/metrics?name=loss&name=lr", Bearer(alice));
  ASSERT_EQ(code, 200) << list;
  ASSERT_EQ(list["series"].size(), 2u) << list;
  EXPECT_EQ(list["series"][0]["name"], "loss");
  EXPECT_EQ(list["series"][0]["points"].size(), 20u);  // logged every step
  EXPECT_EQ(list["series"][0]["points"].back()["step"], "20");
  std::tie(code, list) =
      Api(d.http(), "GET", "/api/v1/jobs/" + std::to_string(done) + "/logs?tail=3&rank=0", Bearer(alice));
  EXPECT_EQ(code, 200);
  EXPECT_EQ(list["lines"].size(), 3u) << list;
  std::tie(code, list) = Api(d.http(), "GET", "/api/v1/jobs/" + std::to_string(done) + "/logs?tail=0", Bearer(alice));
  EXPECT_EQ(code, 400);
  EXPECT_EQ(list["error"], "query parameter 'tail': '0' is not an integer in [1, 10000]");
  // POSTs need the header a cross-site form cannot send, and a foreign job stays refused.
  const std::string cancel_foreign = "/api/v1/jobs/" + std::to_string(foreign) + "/cancel";
  std::tie(code, list) = Api(d.http(), "POST", cancel_foreign, Bearer(bob));
  EXPECT_EQ(code, 403);
  EXPECT_NE(list["error"].get<std::string>().find("X-Dsv3-Request"), std::string::npos) << list;
  std::tie(code, list) = Api(d.http(), "POST", cancel_foreign, Bearer(alice) + "X-Dsv3-Request: 1\r\n");
  EXPECT_EQ(code, 403);
  // Login sets an HttpOnly cookie that then authenticates.
  const std::string login = HttpExchange(
      d.http(), "POST /api/v1/login HTTP/1.1\r\nHost: x\r\nX-Dsv3-Request: 1\r\nContent-Type: application/json\r\n"
                "Content-Length: " + std::to_string(json{{"token", bob}}.dump().size()) +
                    "\r\nConnection: close\r\n\r\n" + json{{"token", bob}}.dump());
  EXPECT_NE(login.find("Set-Cookie: dsv3_token=" + bob + "; Path=/; HttpOnly; SameSite=Strict"), std::string::npos)
      << login;
  std::tie(code, list) = Api(d.http(), "GET", "/api/v1/jobs", "Cookie: dsv3_token=" + bob + "\r\n");
  EXPECT_EQ(Ids(list), std::vector<std::string>{std::to_string(foreign)}) << list;
  // Pages carry a policy that forbids scripts from elsewhere.
  EXPECT_NE(HttpGet(d.http(), "/jobs/1", true).find("Content-Security-Policy: default-src 'self'"), std::string::npos);

  // The browser.
  const std::string shots = std::string(DSV3_TEST_OUTPUT_DIR) + "/dashboard";
  int rc = 0;
  const std::string out = Shell("/usr/bin/python3 " + std::string(DSV3_SOURCE_DIR) +
                                    "/tests/server/dashboard_browser.py --url http://" + d.http() + " --token " + alice +
                                    " --done " + std::to_string(done) + " --running " + std::to_string(running) +
                                    " --foreign " + std::to_string(foreign) + " --out " + shots,
                                &rc);
  ASSERT_EQ(rc, 0) << out;
  const json r = json::parse(out.substr(out.find('{')), nullptr, false);
  ASSERT_TRUE(r.is_object()) << out;
  EXPECT_FALSE(r.contains("failure")) << r.dump(2);
  EXPECT_EQ(r["redirected_to"], "/login");
  EXPECT_NE(r.value("wrong_token_error", "").find("UNAUTHENTICATED: the token is not valid"), std::string::npos) << r;
  EXPECT_EQ(r["cookie_visible_to_scripts"], false);
  EXPECT_EQ(r["who"], "alice");
  // Alice's two jobs, newest first; bob's is not there.
  EXPECT_EQ(r["jobs_listed"], json::array({std::to_string(running), std::to_string(done)})) << r;
  EXPECT_EQ(r["completed_filter"], json::array({std::to_string(done)})) << r;
  for (const char* chart : {"chart-loss", "chart-lr", "chart-throughput", "chart-mfu", "chart-experts"}) {
    EXPECT_GE(r["done_points"].value(chart, 0), 20) << chart << ": " << r["done_points"];
  }
  EXPECT_EQ(r["done_points"]["chart-loss"], 22);  // 20 training points and 2 evaluations
  EXPECT_EQ(r["done_val_loss_points"], 2);
  EXPECT_EQ(r["done_state"], "COMPLETED");
  EXPECT_GT(r["done_log_lines"].get<int>(), 20);
  EXPECT_EQ(r["done_checkpoints"], 2);
  EXPECT_EQ(r["done_evaluations"], 2);
  EXPECT_GE(r["done_history"].get<int>(), 4);  // queued, starting, running, completed
  EXPECT_EQ(r["done_ranks"], 1);
  EXPECT_EQ(r["done_config_has_model"], true);
  EXPECT_EQ(r["done_cancel_hidden"], true);
  ASSERT_EQ(r["live_points"].size(), 2u) << r;
  EXPECT_GT(r["live_points"][1].get<int>(), r["live_points"][0].get<int>());
  EXPECT_EQ(r["cancel_armed"], "Confirm cancel");
  EXPECT_EQ(r["running_state_after_cancel"], "CANCELED");
  EXPECT_NE(r.value("foreign_error", "").find("PERMISSION_DENIED"), std::string::npos) << r;
  EXPECT_EQ(r["foreign_content_hidden"], true);
  EXPECT_EQ(r["allocator"], "local");
  // This machine (and, where deploy/test.sh started one, the local Slurm's node): up, 2 slots.
  ASSERT_GE(r["nodes"].size(), 1u) << r;
  EXPECT_EQ(r["nodes"][0][2], "up") << r;
  EXPECT_EQ(r["nodes"][0][4], "2") << r;
  EXPECT_EQ(r["errors"], json::array()) << r;
  EXPECT_EQ(r["after_logout_status"], 401);
  for (const char* shot : {"login.png", "jobs.png", "job.png", "nodes.png"}) {
    EXPECT_GT(fs::file_size(fs::path(shots) / shot), 10000u) << shot;
  }
  // The page's cancel went through the service: the job ended CANCELED with the page's reason.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + alice);
  v1::GetJobRequest req;
  req.set_job_id(running);
  v1::Job job;
  ASSERT_TRUE(stub->GetJob(&ctx, req, &job).ok());
  EXPECT_EQ(job.state(), v1::JOB_STATE_CANCELED);
  bool reason_recorded = false;
  for (const auto& h : job.history()) reason_recorded |= h.reason().rfind("canceled: from the web dashboard", 0) == 0;
  EXPECT_TRUE(reason_recorded) << job.DebugString();

  // Bob's job (as short as alice's first) ends before the daemon does.
  EXPECT_TRUE(WaitFor(
      [&] {
        const auto [c, j] = Api(d.http(), "GET", "/api/v1/jobs/" + std::to_string(foreign), Bearer(bob));
        return j.value("state", "") == "JOB_STATE_COMPLETED";
      },
      std::chrono::seconds(60)));
}

}  // namespace
}  // namespace dsv3::test
