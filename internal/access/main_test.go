package access

import (
	"os"
	"testing"

	"github.com/ibcm-project/ibcm/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
