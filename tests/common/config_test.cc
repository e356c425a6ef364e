#include <gtest/gtest.h>
#include "dsv3/common/config_io.h"
TEST(Config, Placeholder) { EXPECT_TRUE(dsv3::config::LoadConfigText("{}").ok()); }
